"""parl_core: train, attack and measure the diversity of ensembles (the PARL paper).

Public API (DESIGN §4); every name below is stable.
"""
__version__ = "0.1.0"

from .data import Dataset, load_dataset, default_eps_grid, augment_batch, evaluation_subset, DATASETS, TOY_2D  # noqa: E402
from .models import build_model, ARCHS  # noqa: E402
from .ensemble import Ensemble  # noqa: E402
from .layergrad import layer_gradients  # noqa: E402
from .losses import parl_loss, make_method, METHODS, method_label  # noqa: E402
from .train import train, build_ensemble, evaluate_accuracy, mean_pairwise_r, layer_cosines, default_device  # noqa: E402
from .checkpoints import save_checkpoint, load_checkpoint, read_metadata, file_hash  # noqa: E402
from .baselines import adp_loss, gal_loss, dverge_distill  # noqa: E402
from .dverge import member_pgd  # noqa: E402
from .features import layer_outputs, FEATURE_SPACES  # noqa: E402
from .gradients import input_gradients, gradient_cosines, cosine_to_angle, cosine_distribution, embed_directions  # noqa: E402
from .cka import linear_cka, unbiased_cka, minibatch_cka, layerwise_cka, ensemble_cka  # noqa: E402
from .attacks import ALL_ATTACKS, EXTRA_ATTACKS  # noqa: E402
from .evaluate import attack, attack_restarts, ATTACKS, robustness_curve, transferability_matrix, RobustnessResult, wilson_interval  # noqa: E402
from .checkpoint_eval import evaluate_checkpoint, evaluate_checkpoints, cached_evaluation  # noqa: E402
from .per_attack import evaluate_per_attack, merge_results  # noqa: E402
from .stats import paired_comparison, paired_difference  # noqa: E402
from .surrogates import transfer_suite, worst_over_surrogates, SurrogateSuite  # noqa: E402
from .diagnostics import step_convergence, white_below_black  # noqa: E402
from .midi import mi_di  # noqa: E402
from .importers import import_members  # noqa: E402
from .hooked import HookedModel, import_module_members  # noqa: E402
from .trs import trs_loss  # noqa: E402
from .playground import PlaygroundConfig, PlaygroundSession, playground_methods  # noqa: E402
