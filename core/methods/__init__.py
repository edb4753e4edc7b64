"""The audit methods, one module each, every one a scikit-learn estimator.

The contract: a method is a ``sklearn.base.BaseEstimator`` whose ``__init__`` only stores
its parameters (keywords with defaults, named as the attributes, so ``get_params``,
``set_params`` and ``clone`` work); ``fit(...)`` validates them and the data (numpy arrays,
torch modules: never Streamlit state), stores what it learned in attributes ending with
``_`` and returns ``self``; methods read the fitted state. ``get_params()`` is the key of a
cached run. To add a method: one module here with its estimator, its names below, and a
case in tests/unit/test_methods.py.

    from core.methods import UDIS, Spotlight

    spotlight = Spotlight(size=0.02, n_spotlights=5).fit(embeddings, losses)
    spotlight.spotlights_[0].top_rows(10)
    udis = UDIS().fit(embeddings, correct)
    udis.under_performing(0.5)
"""

from core.methods.activis.matrix import (
    ActivationMatrix,
    Projection,
    instance_grid,
    membership_matrix,
    pages_for,
)
from core.methods.intersectional.naps import (
    NAPs,
    TopographicLayout,
    map_scale,
    nap_similarity,
    relaxation_step,
    topomap,
)
from core.methods.intersectional.probes import LinearProbes
from core.methods.saliency.explain import (
    FilterSaliency,
    FilterTurnOff,
    FineTuneCheck,
    MaskingExperiment,
    marker_mass_ratio,
    postprocess,
)
from core.methods.saliency.failure_modes import (
    FailureMode,
    FailureModes,
    confusion_cell_groups,
    failure_mode_scorecard,
)
from core.methods.spotlight.search import (
    KERNELS,
    PRECISIONS,
    NothingToFind,
    Progress,
    Spotlight,
    SpotlightError,
    SpotlightFit,
    summary,
    weights_table,
)
from core.methods.subgroups.gradcam import GradCAM, overlay
from core.methods.subgroups.neurons import (
    CLUSTER_THRESHOLD,
    ConceptPatches,
    ConceptPatchFinder,
    Neuron,
    NeuronClusters,
    NeuronSelector,
    neuron_columns,
    panel_neurons,
)
from core.methods.subgroups.udis import (
    UDIS,
    UDIS_THRESHOLD,
    VISCUIT_THRESHOLD,
    SubgroupError,
    subgroup_confusion,
    subgroups_csv,
    top_loss_rows,
)

__all__ = [
    "ActivationMatrix",
    "Projection",
    "instance_grid",
    "membership_matrix",
    "pages_for",
    "KERNELS",
    "PRECISIONS",
    "UDIS",
    "UDIS_THRESHOLD",
    "VISCUIT_THRESHOLD",
    "ConceptPatchFinder",
    "ConceptPatches",
    "FilterSaliency",
    "FilterTurnOff",
    "FineTuneCheck",
    "FailureMode",
    "FailureModes",
    "GradCAM",
    "LinearProbes",
    "MaskingExperiment",
    "NAPs",
    "Neuron",
    "NeuronClusters",
    "NeuronSelector",
    "NothingToFind",
    "Progress",
    "Spotlight",
    "SpotlightError",
    "SpotlightFit",
    "SubgroupError",
    "TopographicLayout",
    "neuron_columns",
    "panel_neurons",
    "CLUSTER_THRESHOLD",
    "confusion_cell_groups",
    "failure_mode_scorecard",
    "map_scale",
    "marker_mass_ratio",
    "nap_similarity",
    "overlay",
    "postprocess",
    "relaxation_step",
    "subgroup_confusion",
    "subgroups_csv",
    "summary",
    "topomap",
    "top_loss_rows",
    "weights_table",
]
