"""The planted-bias demo: rendered Fashion-MNIST with known failure modes, and its CNN.

- ``slices.toml``: the rendering attributes and planted slices (data, not code).
- ``fashion``: finds and parses Fashion-MNIST.
- ``spec``: reads and validates a slices file (``DemoSpec``).
- ``generator``: renders a split of a ``DemoSpec`` (``render``).
- ``dataset``: ``DemoDataset``, the demo as an ``ImageDataset`` with ground truth.
- ``model``: ``DemoCNN`` and ``load_demo_model`` (committed weights in ``weights/``).
- ``kinds``: registers the ``demo`` model and dataset kinds; importing ``core.demo`` does it.
- ``train``: the training recipe (``python -m core.demo.train``) and ``evaluate_demo``.
- ``independent``: ``independent_images``, the test garments rendered with another seed: the
  Filter saliency page's independent image set for the demo workspaces.
"""

from core.demo import kinds  # noqa: F401  (registers the 'demo' model and dataset kinds)
