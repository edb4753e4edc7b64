"""The audit methods, one module each: scikit-learn estimators and per-image explainers.

The estimator contract: a method that learns from a dataset is a
``sklearn.base.BaseEstimator`` whose ``__init__`` only stores its parameters (keywords with
defaults, named as the attributes, so ``get_params``, ``set_params`` and ``clone`` work);
``fit(...)`` validates them and the data (numpy arrays, torch modules: never Streamlit
state), stores what it learned in attributes ending with ``_`` and returns ``self``;
methods read the fitted state. ``get_params()`` is the key of a cached run. To add one: one
module here with its estimator, its names below, and a case in tests/unit/test_methods.py.

The explainer contract (``core.methods.explainer.Explainer``): a method that explains one
image or a batch under a model learns nothing, so it has no ``fit``: keyword-only
parameters in ``__init__``, ``get_params()``, and one call ``explain(model, images,
targets, **context)`` that returns a frozen result dataclass (``GradCAM``,
``FilterSaliency``, ``FilterTurnOff``, ``FineTuneCheck``, ``MaskingExperiment``,
``OcclusionMap``, ``CounterfactualCheck``). To add
one: its names below and a case in tests/unit/test_explainers.py.

    from core.methods import UDIS, GradCAM, Spotlight

    spotlight = Spotlight(size=0.02, n_spotlights=5).fit(embeddings, losses)
    spotlight.spotlights_[0].top_rows(10)
    udis = UDIS().fit(embeddings, correct)
    udis.under_performing(0.5)
    cam = GradCAM(layer="layer4").explain(model, image, targets=[3, 7])
    cam.maps[0]
"""

from core.methods.activis.matrix import (
    ActivationMatrix,
    Projection,
    instance_grid,
    membership_matrix,
    pages_for,
)
from core.methods.explainer import Explainer
from core.methods.intersectional.naps import (
    NAPs,
    TopographicLayout,
    map_scale,
    nap_similarity,
    relaxation_step,
    topomap,
)
from core.methods.intersectional.probes import LinearProbes
from core.methods.saliency.counterfactual import (
    CounterfactualCheck,
    CounterfactualResult,
    loss_gradient_maps,
)
from core.methods.saliency.explain import (
    FilterSaliency,
    FilterSaliencyResult,
    FilterTurnOff,
    FilterTurnOffResult,
    FineTuneCheck,
    FineTuneResult,
    MaskingExperiment,
    MaskingResult,
    marker_mass_ratio,
    postprocess,
)
from core.methods.saliency.failure_modes import (
    FailureMode,
    FailureModes,
    confusion_cell_groups,
    failure_mode_scorecard,
)
from core.methods.saliency.occlusion import OcclusionMap, OcclusionResult, occlusion_geometry
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
from core.methods.subgroups.gradcam import GradCAM, GradCAMResult, overlay
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
    "CounterfactualCheck",
    "CounterfactualResult",
    "Explainer",
    "FilterSaliency",
    "FilterSaliencyResult",
    "FilterTurnOff",
    "FilterTurnOffResult",
    "FineTuneCheck",
    "FineTuneResult",
    "FailureMode",
    "FailureModes",
    "GradCAM",
    "GradCAMResult",
    "LinearProbes",
    "MaskingExperiment",
    "MaskingResult",
    "NAPs",
    "Neuron",
    "NeuronClusters",
    "NeuronSelector",
    "NothingToFind",
    "OcclusionMap",
    "OcclusionResult",
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
    "loss_gradient_maps",
    "marker_mass_ratio",
    "nap_similarity",
    "occlusion_geometry",
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

# Each method's record, registered in navigation order (core.methods.records).
from core.methods.activis import record as _activis_record  # noqa: E402
from core.methods.intersectional import record as _intersectional_record  # noqa: E402
from core.methods.records import register_method  # noqa: E402
from core.methods.saliency import record as _saliency_record  # noqa: E402
from core.methods.spotlight import record as _spotlight_record  # noqa: E402
from core.methods.subgroups import record as _subgroups_record  # noqa: E402

for _module in (_spotlight_record, _subgroups_record, _saliency_record, _intersectional_record, _activis_record):
    register_method(_module.RECORD)
