"""Tasks to search on: the demo, the reference networks, ``--model``/``--data`` parsing and the checks of a user's data."""
