"""The Filter saliency page's record: its navigation entry, its subset origin and the settings
its live widgets give the per-image explainers and FailureModes (each Setting names its owner)."""

from core.limits import HOSTED_MAX_FILTERS_K
from core.methods.records import MethodRecord, Setting
from core.methods.saliency.explain import (
    RANKINGS,
    FilterSaliency,
    FilterTurnOff,
    FineTuneCheck,
    MaskingExperiment,
)
from core.methods.saliency.failure_modes import FailureModes

RANKING_HELP = ("Which filters are 'most salient' when turning them off. The authors' pruning code ranks by |z| (the code "
                "behind the paper's Fig. 3), so least salient means z near 0; the paper's text calls the filters of highest z "
                "the most salient (as the input map and the fine-tuning check pick them), so least salient means the most negative z.")

# In the page's order: the image's top filters, turning them off, masking, the fine-tuning
# check's step, the failure modes. The fine-tuning check's k stays on the page: its range and
# default (1% of the model's filters) depend on the model.
SETTINGS = (
    Setting("k", "Top filters (k)", "int", 1, 100_000, hosted_high=HOSTED_MAX_FILTERS_K, hosted_note=True, owner=FilterSaliency,
            help="The paper's F: the k filters of highest z, boosted for the input-space map (eq. 3)."),
    Setting("ranking", "Rank the filters by", "choice", options=RANKINGS, widget="radio", help=RANKING_HELP, owner=FilterTurnOff),
    Setting("threshold", "Mask pixels with map ≥", "float", 0.05, 0.95, step=0.05, widget="slider", owner=MaskingExperiment),
    Setting("least", "least salient (control)", "bool", widget="toggle", owner=MaskingExperiment,
            help="Mask as many pixels, but those of lowest saliency instead."),
    Setting("step", "Step (share of their weight norm)", "float", 0.01, 2.0, step=0.05, format="%.2f", owner=FineTuneCheck,
            help="A normalised gradient step whose length is this share of the chosen filters' weight norm."),
    Setting("n_groups", "Groups", "int", 2, 50, owner=FailureModes),
)

RECORD = MethodRecord(name="saliency", title="Filter saliency", page="pages/saliency.py", icon=":material/tune:", origin="saliency",
                      settings=SETTINGS)
