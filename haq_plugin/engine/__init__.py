"""The search engine: entry points, rounds, environment and reward, search space, budget enforcement, agent, policy evaluation, placement, workers, costs, settings, results."""
