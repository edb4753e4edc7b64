"""The planted-bias demo: rendered Fashion-MNIST with known failure modes, and its CNN.

- ``slices.toml``: the rendering attributes and planted slices (data, not code).
- ``fashion``: finds and parses Fashion-MNIST.
- ``generator``: validates a slices file (``DemoSpec``) and renders a split (``render``).
- ``dataset``: ``DemoDataset``, the demo as an ``ImageDataset`` with ground truth.
- ``model``: ``DemoCNN`` and ``load_demo_model`` (committed weights in ``weights/``).
- ``train``: the training recipe (``python -m core.demo.train``) and ``evaluate_demo``.
"""
