"""Training on sparse labels: small networks, a masked-loss trainer, ensembles, scores.

The loop the paper describes, from a few painted slices to a whole-volume segmentation::

    from napari_qlty import Grid, Weighting
    from napari_qlty.io.pairs_store import PairsDataset, export_pairs
    from napari_qlty.run import predict
    from napari_qlty.train import Ensemble, TrainConfig, train

    for _ in export_pairs(image, annotations, Grid(shape, 64, 32), "pairs.zarr"):
        pass
    train_set, val_set = PairsDataset("pairs.zarr").split(0.2)
    unet = train(TrainConfig(arch="unet", net={"channels": 8}), train_set, val_set,
                 checkpoint="unet.pt").model
    msd = train(TrainConfig(arch="msdnet", net={"layers": 20}), train_set, val_set,
                checkpoint="msd.pt").model
    predict(Ensemble([unet, msd]), image, Grid(shape, 128, 108, 10), "out.zarr",
            weighting=Weighting("border", border_weight=0.0))

``python -m napari_qlty.demo`` runs all of it on the synthetic tomogram.
"""

from .data import InMemoryPairs, PlanarSampler, VolumeSampler, as_pairs
from .ensemble import Ensemble, load_ensemble, save_ensemble
from .metrics import confusion_matrix, f1_scores, macro_f1, near_seams, per_class_f1, seam_report
from .networks import MSDNet, Planar, UNet, msdnet, planar, unet
from .trainer import (
    TrainConfig,
    TrainEvent,
    TrainResult,
    build_model,
    checkpoint_spec,
    class_weights,
    iter_train,
    load_checkpoint,
    masked_cross_entropy,
    save_checkpoint,
    train,
)

__all__ = [
    "Ensemble",
    "InMemoryPairs",
    "MSDNet",
    "Planar",
    "PlanarSampler",
    "TrainConfig",
    "TrainEvent",
    "TrainResult",
    "UNet",
    "VolumeSampler",
    "as_pairs",
    "build_model",
    "checkpoint_spec",
    "class_weights",
    "confusion_matrix",
    "f1_scores",
    "iter_train",
    "load_checkpoint",
    "load_ensemble",
    "macro_f1",
    "masked_cross_entropy",
    "msdnet",
    "near_seams",
    "per_class_f1",
    "planar",
    "save_checkpoint",
    "save_ensemble",
    "seam_report",
    "train",
    "unet",
]
