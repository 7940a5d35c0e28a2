"""ueo: adapt CLIP to an unlabeled image collection with Universal Entropy Optimization (ICML 2024)."""

__version__ = "0.1.0"

from .clip import ClipBundle, WeightsUnavailableError, load_clip  # noqa: E402
from .engine import FitConfig, FitResult, Outputs, evaluate, fit  # noqa: E402
from .metrics import compute_metrics, open_set_metrics  # noqa: E402
from .objectives import entropy, entropy_loss, infomax_loss, mcm_scores, ueo_loss  # noqa: E402
from .prompts import PromptLearner  # noqa: E402
from .tuning import AdaptedState, configure_tuning, tunable_parameters  # noqa: E402

__all__ = [
    "__version__", "ClipBundle", "WeightsUnavailableError", "load_clip", "FitConfig", "FitResult", "Outputs",
    "evaluate", "fit", "compute_metrics", "open_set_metrics", "entropy", "entropy_loss", "infomax_loss",
    "mcm_scores", "ueo_loss", "PromptLearner", "AdaptedState", "configure_tuning", "tunable_parameters",
]
