"""The hosted caps on a visitor's runs. It imports nothing (a layer of its own, just above
core.errors), so the method records' settings (core/methods/*/record.py) can name the caps;
core.services.estimates re-exports them beside the estimates they are checked against."""

HOSTED_MAX_RUN_SECONDS = 600.0  # a visitor's run may take this long by its estimate
HOSTED_MAX_SEEDS = 5  # probe seeds (splits) per run
HOSTED_MAX_EPOCHS = 100  # probe epochs
HOSTED_MAX_PROBE_LAYERS = 8  # layers probed in one run
HOSTED_MAX_PER_GROUP = 256  # images per group the probes train on
HOSTED_MAX_FILTERS_K = 100  # Filter saliency: top filters (k) of one image, filters fine-tuned
HOSTED_MAX_IMAGES = 200  # Filter saliency: images of one turn-off or fine-tuning run over many
