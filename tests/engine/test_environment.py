"""The quantization environment: states, action-to-bits mapping, budget enforcement."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from haq_plugin.engine.costs import CostTable, build_cost_table
from haq_plugin.engine.environment import (
    STATE_DIM, QuantizationEnv, action_to_bits, layer_features, min_max_normalise)
from haq_plugin.engine.space import fixed_bits_for
from haq_plugin.api.errors import HaqError
from haq_plugin.api.layers import LayerSpec, extract_layers
from haq_plugin.api.plugins import get_plugin_manager, load_hardware
from haq_plugin.tasks.zoo import MobileNetV2, resnet18

BITS = tuple(range(1, 9))


def roofline_table(layers: list[LayerSpec], with_energy: bool = False) -> CostTable:
    """Latency of a bit-serial array: compute-bound (MACs x w x a) or memory-bound (bits moved)."""
    b = np.array(BITS, dtype=np.float64)
    macs = np.array([l.macs for l in layers], dtype=np.float64)[:, None, None]
    params = np.array([l.params for l in layers], dtype=np.float64)[:, None, None]
    acts = np.array([l.in_activations for l in layers], dtype=np.float64)[:, None, None]
    compute = macs * b[None, :, None] * b[None, None, :] / (256 * 64)
    memory = (params * b[None, :, None] + acts * b[None, None, :]) / 128
    latency = np.maximum(compute, memory) * 1e-9
    energy = (compute + 4 * memory) * 1e-12 if with_energy else None
    return CostTable(layers, BITS, latency, energy, hardware_name="roofline-test")


@pytest.fixture(scope="module")
def mobilenet_layers() -> list[LayerSpec]:
    return extract_layers(MobileNetV2(), torch.zeros(1, 3, 224, 224))


@pytest.fixture(scope="module", params=["roofline", "bitfusion"])
def table(request, mobilenet_layers) -> CostTable:
    """A cost table of MobileNet-V2's 53 layers: analytic, and from the BitFusion simulator when installed."""
    if request.param == "roofline":
        return roofline_table(mobilenet_layers)
    if "bitfusion" not in get_plugin_manager().hardware.names():
        pytest.skip("the bitfusion hardware model is not registered in this installation")
    return build_cost_table(load_hardware("bitfusion"), mobilenet_layers)


# -- action -> bits ------------------------------------------------------------------------
@pytest.mark.parametrize("allowed", [tuple(range(2, 9)), (3, 4, 5), (2, 4, 8), (8,)])
def test_action_to_bits_covers_every_allowed_width_and_only_those(allowed):
    actions = np.linspace(0.0, 1.0, 20001)
    bits = [action_to_bits(a, allowed) for a in actions]
    assert set(bits) == set(allowed)
    assert bits == sorted(bits), "the mapping is monotone"
    assert bits[0] == allowed[0] and bits[-1] == allowed[-1]
    counts = np.array([bits.count(b) for b in allowed])
    assert counts.max() - counts.min() <= 2, "equal-width bins"


def test_action_to_bits_is_haq_formula_for_contiguous_range():
    rng = np.random.default_rng(0)
    b_min, b_max = 2, 8
    for a in rng.uniform(0, 1, 5000):
        haq = int(np.clip(round(b_min - 0.5 + a * (b_max - b_min + 1)), b_min, b_max))
        assert action_to_bits(a, range(b_min, b_max + 1)) == haq
    assert action_to_bits(-0.3, (2, 3)) == 2 and action_to_bits(1.7, (2, 3)) == 3


# -- states --------------------------------------------------------------------------------
def test_layer_features_follow_the_haq_definition(mobilenet_layers):
    raw = layer_features(mobilenet_layers)
    first, dw, fc = mobilenet_layers[0], mobilenet_layers[1], mobilenet_layers[-1]
    assert raw[0].tolist() == [0, 3, 32, 3, 2, 224 * 224, first.params, 0]
    assert raw[1].tolist() == [1, 32, 32, 3, 1, 112 * 112, dw.params, 1]
    assert fc.kind == "linear"
    assert raw[-1].tolist() == [52, 1280, 1000, 1, 0, 1280, 1280 * 1000, 0]
    normalised = min_max_normalise(raw)
    assert normalised.min() == 0.0 and normalised.max() == 1.0
    assert np.allclose(normalised[:, 0], np.arange(53) / 52)


def test_constant_feature_normalises_to_zero():
    layers = [LayerSpec(f"l{i}", "conv", 8, 8, 3, 1, in_size=8, out_size=8) for i in range(3)]
    normalised = min_max_normalise(layer_features(layers))
    assert np.all(normalised[:, 1:] == 0.0)
    assert normalised[:, 0].tolist() == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("model", [MobileNetV2, resnet18])
def test_states_are_normalised_and_track_the_previous_step(model):
    layers = extract_layers(model(), torch.zeros(1, 3, 224, 224))
    env = QuantizationEnv(layers, roofline_table(layers), "latency", 0.6, range(2, 9),
                          fixed_bits_for(layers))
    rng = np.random.default_rng(1)
    for _ in range(3):
        state = env.reset()
        steps = 0
        while state is not None:
            assert steps < env.n_steps, "an episode has exactly n_steps steps"
            assert state.shape == (STATE_DIM,)
            assert np.all(state >= 0.0) and np.all(state <= 1.0)
            assert state[8] == (1.0 if steps % 2 == 0 else 0.0), "weight step flag alternates"
            if steps:
                assert state[9] == env._chosen[-1] / 8.0
            else:
                assert state[9] == 0.0
            state = env.step(rng.uniform())
            steps += 1
        assert steps == 2 * len(layers) == env.n_steps


def test_fixed_bits_ignore_the_action(mobilenet_layers):
    layers = mobilenet_layers
    fixed = fixed_bits_for(layers, pins={layers[5].name: (3, 7)})
    env = QuantizationEnv(layers, roofline_table(layers), "latency", 1.0, range(2, 9), fixed)
    env.reset()
    for _ in range(env.n_steps):
        env.step(0.0)
    chosen = env.chosen_bits()
    assert chosen[0] == (8, 8) and chosen[-1] == (8, 8) and chosen[5] == (3, 7)
    assert all(pair == (2, 2) for i, pair in enumerate(chosen) if i not in (0, 5, len(layers) - 1))


# -- budget enforcement -------------------------------------------------------------------
def test_enforcement_always_returns_a_policy_within_budget(table, mobilenet_layers):
    layers = mobilenet_layers
    rng = np.random.default_rng(2)
    fixed_variants = [fixed_bits_for(layers), fixed_bits_for(layers, False, False),
                      fixed_bits_for(layers, pins={layers[10].name: (6, 5), layers[20].name: (2, 8)})]
    checked = 0
    for fixed in fixed_variants:
        for allowed in (range(2, 9), (2, 4, 8), range(3, 7)):
            probe = QuantizationEnv(layers, table, "latency", 1.0, allowed, fixed)
            floor = probe.fraction(probe.cheapest)
            for budget in rng.uniform(floor, 1.0, 8):
                env = QuantizationEnv(layers, table, "latency", float(budget), allowed, fixed)
                for _ in range(5):
                    proposed = [(env.fixed[i][0] or int(rng.choice(env.allowed)),
                                 env.fixed[i][1] or int(rng.choice(env.allowed))) for i in range(len(layers))]
                    enforced = env.enforce_budget(proposed)
                    assert env.fits(enforced)
                    assert env.cost(enforced) <= budget * env.budget.reference * (1 + 1e-9)
                    for i, ((pw, pa), (ew, ea)) in enumerate(zip(proposed, enforced)):
                        # bits only go down, except on hardware where fewer bits can cost more, where a
                        # layer may jump to its cheapest pair once the sweeps reached minimum bits
                        assert (ew <= pw and ea <= pa) or (ew, ea) == env.cheapest[i]
                        assert ew in env.allowed or env.fixed[i][0] == ew
                        assert ea in env.allowed or env.fixed[i][1] == ea
                        if env.fixed[i][0] is not None:
                            assert ew == env.fixed[i][0]
                        if env.fixed[i][1] is not None:
                            assert ea == env.fixed[i][1]
                    checked += 1
    assert checked == 3 * 3 * 8 * 5


def test_enforcement_keeps_a_fitting_policy_and_lowers_the_largest_saving_first(mobilenet_layers):
    layers = mobilenet_layers
    table = roofline_table(layers)
    env = QuantizationEnv(layers, table, "size", 0.999, range(2, 9), {})
    eight = [(8, 8)] * len(layers)
    # size depends on weight bits only: the largest layer (the 1280x1000 classifier) saves most per bit,
    # and its activation, which saves nothing, stays at 8
    assert max(range(len(layers)), key=lambda i: layers[i].params) == len(layers) - 1
    enforced = env.enforce_budget(eight)
    assert enforced[:-1] == eight[:-1]
    assert enforced[-1] == (7, 8), "only the weight of the layer saving most is lowered"
    fitting = [(4, 4)] * len(layers)
    assert env.enforce_budget(fitting) == fitting


def test_enforcement_lowers_in_rounds_and_gives_back_the_rest(mobilenet_layers):
    layers = mobilenet_layers
    env = QuantizationEnv(layers, roofline_table(layers), "size", 0.3, range(2, 9), {})
    enforced = env.enforce_budget([(8, 8)] * len(layers))
    assert env.fits(enforced)
    assert all(a == 8 for _, a in enforced), "activations cost nothing under size: never lowered"
    weights = [w for w, _ in enforced]
    # size 0.3 of 8-bit is below 3/8: rounds take every layer to 2 or 3 bits, then the budget left over
    # goes back to the slots with the fewest bits, cheapest first, so small layers end higher
    assert min(weights) == 2 and max(weights) > 3
    assert_maximal(env, enforced, [(8, 8)] * len(layers))


def test_infeasible_budget_states_the_smallest_feasible_fraction(mobilenet_layers):
    layers = mobilenet_layers
    table = roofline_table(layers)
    fixed = fixed_bits_for(layers)
    with pytest.raises(HaqError, match="smallest feasible budget is") as info:
        QuantizationEnv(layers, table, "latency", 0.01, range(2, 9), fixed)
    stated = float(re.search(r"smallest feasible budget is ([0-9.]+)", str(info.value)).group(1))
    exact = math.fsum(table.latency[i, table.index(w), table.index(a)]
                      for i, (w, a) in enumerate([(8, 8)] + [(2, 2)] * 51 + [(8, 8)])) / \
        table.latency[:, 7, 7].sum()
    assert exact <= stated < exact + 1e-4
    QuantizationEnv(layers, table, "latency", stated, range(2, 9), fixed)  # the stated budget works
    with pytest.raises(HaqError, match="cannot be met"):
        QuantizationEnv(layers, table, "latency", exact * 0.999, range(2, 9), fixed)


def test_enforcement_handles_widths_that_cost_more_than_wider_ones(mobilenet_layers):
    """Hardware without native 2-bit support: 2-bit weights cost more than 3-bit ones."""
    layers = mobilenet_layers
    table = roofline_table(layers)
    latency = table.latency.copy()
    latency[:, table.index(2), :] = latency[:, table.index(5), :] * 1.1
    odd = CostTable(layers, BITS, latency, hardware_name="no-2bit-weights")
    fixed = fixed_bits_for(layers)
    probe = QuantizationEnv(layers, odd, "latency", 1.0, range(2, 9), fixed)
    assert all(w == 3 for w, _ in probe.cheapest[1:-1]) and all(a == 2 for _, a in probe.cheapest[1:-1])
    floor, all_min = probe.fraction(probe.cheapest), probe.fraction(probe.minimum_bits())
    assert floor < all_min
    rng = np.random.default_rng(4)
    for budget in np.linspace(floor, all_min, 6):
        env = QuantizationEnv(layers, odd, "latency", float(budget), range(2, 9), fixed)
        for _ in range(10):
            proposed = [(8, 8)] + [tuple(int(b) for b in rng.integers(2, 9, 2)) for _ in layers[1:-1]] + [(8, 8)]
            assert env.fits(env.enforce_budget(proposed))
    with pytest.raises(HaqError, match=f"smallest feasible budget is {math.ceil(floor * 1e4) / 1e4:.4f}"):
        QuantizationEnv(layers, odd, "latency", floor * 0.99, range(2, 9), fixed)


@pytest.mark.parametrize("budget", [0.0, -0.2, 1.01, 3])
def test_budget_outside_unit_interval_is_refused(mobilenet_layers, budget):
    with pytest.raises(HaqError, match=r"budget must be a fraction of the 8-bit cost in \(0, 1\]"):
        QuantizationEnv(mobilenet_layers, roofline_table(mobilenet_layers), "latency", budget, range(2, 9))


def test_energy_constraint_needs_an_energy_table(mobilenet_layers):
    with pytest.raises(HaqError, match="has no energy model"):
        QuantizationEnv(mobilenet_layers, roofline_table(mobilenet_layers), "energy", 0.5, range(2, 9))
    env = QuantizationEnv(mobilenet_layers, roofline_table(mobilenet_layers, with_energy=True), "energy", 0.5,
                          range(2, 9))
    assert env.fits(env.enforce_budget([(8, 8)] * len(mobilenet_layers)))


def test_bits_missing_from_the_table_are_refused(mobilenet_layers):
    layers = mobilenet_layers
    small = roofline_table(layers)
    cut = CostTable(layers, BITS[:4], small.latency[:, :4, :4], hardware_name="four-bit-chip")
    with pytest.raises(HaqError, match="8-bit costs are not in the cost table of hardware 'four-bit-chip'"):
        QuantizationEnv(layers, cut, "latency", 0.5, range(2, 5))


def test_pins_are_checked(mobilenet_layers):
    with pytest.raises(HaqError, match="no quantizable layer named 'nope'"):
        fixed_bits_for(mobilenet_layers, pins={"nope": (4, 4)})
    with pytest.raises(HaqError, match="pair of integers"):
        fixed_bits_for(mobilenet_layers, pins={mobilenet_layers[3].name: (4.0, 4)})
    fixed = fixed_bits_for(mobilenet_layers, keep_last_layer_8bit=True,
                           pins={mobilenet_layers[-1].name: (6, 4)})
    assert fixed[mobilenet_layers[-1].name] == (6, 4), "a pin wins over keep_last_layer_8bit"


def test_best_uniform_is_the_highest_width_that_fits(table, mobilenet_layers):
    for budget in (0.3, 0.5, 0.8, 1.0):
        try:
            env = QuantizationEnv(mobilenet_layers, table, "latency", budget, range(2, 9),
                                  fixed_bits_for(mobilenet_layers))
        except HaqError:
            continue  # below what this hardware can reach at 2 bits
        found = env.best_uniform()
        if found is None:
            assert not env.fits(env.minimum_bits()), "the all-minimum policy is uniform"
            continue
        bits, policy = found
        assert env.fits(policy)
        assert policy[0] == (8, 8) and policy[-1] == (8, 8)
        assert all(pair == (bits, bits) for pair in policy[1:-1])
        if bits < 8:
            assert not env.fits(env.uniform_bits(bits + 1))
        if budget == 1.0:
            assert bits == 8


# -- cost-aware enforcement ------------------------------------------------------------------
def assert_maximal(env: QuantizationEnv, enforced, proposed, skip=()) -> None:
    """No single one-width raise of a lowered free slot, back towards the proposal, still fits."""
    raises = 0
    for i, (now, asked) in enumerate(zip(enforced, proposed)):
        for slot in (0, 1):
            if i in skip or env.fixed[i][slot] is not None or now[slot] >= asked[slot]:
                continue
            raised = list(enforced)
            pair = list(now)
            pair[slot] = min(b for b in env.allowed if b > now[slot])
            raised[i] = tuple(pair)
            assert not env.fits(raised), f"layer {i} slot {slot}: {now} -> {pair} still fits"
            raises += 1
    assert raises > 0, "the check examined no lowered slot"


def random_policy(env: QuantizationEnv, rng: np.random.Generator, low: int = 6) -> list[tuple[int, int]]:
    """Random free bits of at least ``low`` (so that the tested budgets are exceeded)."""
    wide = [b for b in env.allowed if b >= low]
    return [(env.fixed[i][0] or int(rng.choice(wide)), env.fixed[i][1] or int(rng.choice(wide)))
            for i in range(len(env.layers))]


def test_slots_that_save_nothing_are_never_lowered(table, mobilenet_layers):
    """Under size activations cost nothing; on any table a lowered slot must have made the policy cheaper."""
    rng = np.random.default_rng(7)
    for constraint, budget in (("size", 0.65), ("latency", 0.75), ("size", 0.8)):
        env = QuantizationEnv(mobilenet_layers, table, constraint, budget, range(2, 9), fixed_bits_for(mobilenet_layers))
        for _ in range(6):
            proposed = random_policy(env, rng)
            enforced = env.enforce_budget(proposed)
            assert env.fits(enforced) and not env.fits(proposed)
            if constraint == "size":
                assert [a for _, a in enforced] == [a for _, a in proposed]
            for i, (now, asked) in enumerate(zip(enforced, proposed)):
                for slot in (0, 1):
                    if now[slot] < asked[slot]:
                        restored = list(now)
                        restored[slot] = asked[slot]
                        assert env.layer_cost(i, *restored) > env.layer_cost(i, *now), (i, slot, now, asked)


def test_enforced_policy_is_maximal(table, mobilenet_layers):
    rng = np.random.default_rng(8)
    layers = mobilenet_layers
    fixed = fixed_bits_for(layers, False, True)
    for constraint, share in (("size", 0.3), ("latency", 0.2), ("bops", 0.1)):
        probe = QuantizationEnv(layers, table, constraint, 1.0, range(2, 9), fixed)
        floor = probe.fraction(probe.cheapest)
        env = QuantizationEnv(layers, table, constraint, floor + share * (1 - floor), range(2, 9), fixed)
        for _ in range(5):
            proposed = random_policy(env, rng)
            enforced = env.enforce_budget(proposed)
            assert env.fits(enforced) and not env.fits(proposed)
            assert all(e <= p for pe, pp in zip(enforced, proposed) for e, p in zip(pe, pp))
            assert_maximal(env, enforced, proposed)


def test_the_smallest_layer_does_not_pay_first(mobilenet_layers):
    """Without kept layers, a budget just under 8-bit is met on the large layers, not the last one."""
    layers = mobilenet_layers
    env = QuantizationEnv(layers, roofline_table(layers), "size", 0.9, range(2, 9), {})
    enforced = env.enforce_budget([(8, 8)] * len(layers))
    lowered = [i for i, (w, _) in enumerate(enforced) if w < 8]
    smallest = min(range(len(layers)), key=lambda i: layers[i].params)
    assert smallest not in lowered
    saved = sum(layers[i].params * (8 - enforced[i][0]) for i in lowered) / 8
    assert saved >= 0.1 * sum(layer.params for layer in layers)
    assert_maximal(env, enforced, [(8, 8)] * len(layers))


def test_enforcement_is_deterministic(table, mobilenet_layers):
    rng = np.random.default_rng(9)
    env = QuantizationEnv(mobilenet_layers, table, "latency", 0.8, range(2, 9), fixed_bits_for(mobilenet_layers))
    proposals = [random_policy(env, rng) for _ in range(5)]
    first = [env.enforce_budget(p) for p in proposals]
    again = QuantizationEnv(mobilenet_layers, table, "latency", 0.8, range(2, 9), fixed_bits_for(mobilenet_layers))
    assert [again.enforce_budget(p) for p in proposals] == first == [env.enforce_budget(p) for p in proposals]


def test_widths_costing_more_are_skipped_not_taken(mobilenet_layers):
    """Where 2-bit weights cost more than 3-bit ones, enforcement never picks 2-bit weights."""
    layers = mobilenet_layers
    table = roofline_table(layers)
    latency = table.latency.copy()
    latency[:, table.index(2), :] = latency[:, table.index(5), :] * 1.1
    odd = CostTable(layers, BITS, latency, hardware_name="no-2bit-weights")
    env = QuantizationEnv(layers, odd, "latency", 0.3, range(2, 9), fixed_bits_for(layers))
    rng = np.random.default_rng(5)
    for _ in range(10):
        proposed = [(8, 8)] + [(int(rng.integers(3, 9)), int(rng.integers(2, 9))) for _ in layers[1:-1]] + [(8, 8)]
        enforced = env.enforce_budget(proposed)
        assert env.fits(enforced)
        assert all(w >= 3 for w, _ in enforced)
        assert_maximal(env, enforced, proposed)


# -- weight-only mode ------------------------------------------------------------------------
def test_weight_only_episodes_have_one_step_per_layer(table, mobilenet_layers):
    layers = mobilenet_layers
    fixed = fixed_bits_for(layers, pins={layers[5].name: (3, 4)})
    env = QuantizationEnv(layers, table, "size", 0.65, range(2, 9), fixed, quantize="weights")
    assert env.n_steps == len(layers) and env.weights_only
    rng = np.random.default_rng(3)
    state, states = env.reset(), []
    actions = rng.uniform(0, 1, env.n_steps)
    for action in actions:
        states.append(state)
        state = env.step(action)
    assert state is None
    states = np.asarray(states)
    assert (states[:, 8] == 1.0).all()
    np.testing.assert_allclose(states[:, 0], np.linspace(0, 1, len(layers)))
    chosen = env.chosen_bits()
    assert [a for _, a in chosen] == [8] * len(layers), "activations are recorded at 8 bits"
    assert chosen[5][0] == 3 and chosen[0] == chosen[-1] == (8, 8)
    for k in range(1, len(layers)):
        assert states[k, 9] == pytest.approx(chosen[k - 1][0] / 8)
    free = [action_to_bits(a, env.allowed) for a in actions]
    assert [w for w, _ in chosen][1:-1] == [b if k != 5 else 3 for k, b in enumerate(free)][1:-1]
    enforced = env.enforce_budget(chosen)
    assert env.fits(enforced) and [a for _, a in enforced] == [8] * len(layers)
    assert env.uniform_bits(3)[1] == (3, 8)


def test_weight_only_latency_keeps_activations_at_eight(table, mobilenet_layers):
    layers = mobilenet_layers
    both = QuantizationEnv(layers, table, "latency", 1.0, range(2, 9), {})
    weights = QuantizationEnv(layers, table, "latency", 1.0, range(2, 9), {}, quantize="weights")
    assert weights.fraction(weights.cheapest) >= both.fraction(both.cheapest)
    budget = (weights.fraction(weights.cheapest) + 1.0) / 2
    env = QuantizationEnv(layers, table, "latency", budget, range(2, 9), {}, quantize="weights")
    enforced = env.enforce_budget([(8, 8)] * len(layers))
    assert env.fits(enforced) and all(a == 8 for _, a in enforced) and min(w for w, _ in enforced) < 8


def test_unknown_quantize_mode_is_refused(mobilenet_layers):
    with pytest.raises(HaqError, match="is not a quantization mode"):
        QuantizationEnv(mobilenet_layers, roofline_table(mobilenet_layers), "size", 0.5, range(2, 9), {},
                        quantize="activations")
