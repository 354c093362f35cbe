"""LightningModules: interactive finetuning (experts, foundation), gate training and expert routers, sharing
one click loop (`sammoe.interact.rollout`) and one evaluation on crops (`sammoe.interact.crop_evaluation`,
driven by `base`); `cli` runs them through LightningCLI."""

from sammoe.lit.base import InteractiveModule
from sammoe.lit.cohort_data import CohortDataModule
from sammoe.lit.cohort_predict import CohortPrediction
from sammoe.lit.finetune import ExpertFinetune
from sammoe.lit.gate import GateTraining
from sammoe.lit.phantom_data import PhantomDataModule
from sammoe.lit.router import RouterTraining

__all__ = [
    "CohortDataModule",
    "CohortPrediction",
    "InteractiveModule",
    "ExpertFinetune",
    "GateTraining",
    "PhantomDataModule",
    "RouterTraining",
]
