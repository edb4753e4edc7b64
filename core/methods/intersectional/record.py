"""The Intersectional page's record: its navigation entry, its probes (LinearProbes, with their
own defaults) and the probe settings the page draws live."""

from core.limits import HOSTED_MAX_EPOCHS, HOSTED_MAX_PER_GROUP, HOSTED_MAX_SEEDS
from core.methods.intersectional.probes import LinearProbes
from core.methods.records import MethodRecord, Setting

# The page's probe widgets: the sample (cap per group, sampling seed, which also draws the NAP
# sample and seeds the layout) beside the NAP cap, then seeds and epochs beside the layers.
SETTINGS = (
    Setting("per_group", "Cap per group (probes)", "int", 4, 100_000, hosted_high=HOSTED_MAX_PER_GROUP),
    Setting("seed", "Sampling seed", "int", 0, 10_000),
    Setting("n_seeds", "Seeds", "int", 1, 20, hosted_high=HOSTED_MAX_SEEDS,
            help="Each seed draws a new 90/10 split and initialisation: the interval is over seeds."),
    Setting("epochs", "Epochs", "int", 1, 500, hosted_high=HOSTED_MAX_EPOCHS),
)

RECORD = MethodRecord(name="intersectional", title="Intersectional", page="pages/intersectional.py", icon=":material/category:",
                      origin=None, estimator=LinearProbes, defaults=lambda n: LinearProbes(), settings=SETTINGS)
