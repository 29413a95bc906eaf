"""Tasks beyond the image classifiers of the core: each one turns a user's model and data
into what a search needs (a model, an example input, the layers to quantize and an
evaluation function), so the search itself stays task-agnostic."""
