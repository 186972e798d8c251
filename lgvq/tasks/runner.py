"""Train and evaluate every downstream task for one frozen VQ model under a fixed budget.

    data = prepare_task_data(train_set, test_set, text_encoder, budget, seed)   # once
    plain = run_all_tasks(vq_model, train_set, test_set, text_encoder, budget, seed, data=data)
    guided = run_all_tasks(lg_model, train_set, test_set, text_encoder, budget, seed, data=data)

Everything that does not depend on the VQ model (text features, VQA questions, the image
scorers and their statistics of the real test images) lives in ``TaskData``: sharing it
between models saves time and guarantees both are scored alike. With the same budget and
seed, two models differ only in their codes and codebook.

Data with ground-truth scenes (the embedded shapes) gets every task and the attribute
scorer; other captioned data (CUB, CelebA, COCO, TextCaps, a folder) gets every task but VQA
and semantic synthesis, with caption metrics against the dataset's own captions and, given
Inception weights (``fid_features``), FID of generated images against the real test images.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch.utils.data import Subset

from lgvq.checks import check_positive
from lgvq.tasks.autoregressive import Sampling
from lgvq.tasks.captioning import Captioner
from lgvq.tasks.codes import (
    CodeDataset,
    code_grid,
    decode_codes,
    encode_dataset,
    model_device,
)
from lgvq.tasks.completion import complete
from lgvq.data import SEMANTIC_CLASSES
from lgvq.tasks.evaluation import (
    caption_metrics,
    foreground_iou,
    java_available,
    psnr,
    scene_labels,
    train_attribute_classifier,
)
from lgvq.tasks.image_scoring import AttributeScorer, FIDScorer, ImageScorer
from lgvq.tasks.layers import TransformerSize
from lgvq.tasks.semantic_synthesis import SemanticSynthesis
from lgvq.tasks.text_features import TextFeatures, encode_texts
from lgvq.tasks.text_to_image import TextToImage
from lgvq.tasks.training import TrainSettings
from lgvq.tasks.unconditional import UnconditionalGenerator
from lgvq.threads import torch_threads
from lgvq.tasks.vqa import QuestionAnswerer, VQAExamples, vqa_examples
from lgvq.experiment.visualize import save_image_grid


@dataclass(frozen=True)
class TaskBudget:
    """The fixed compute every task gets, identical for every VQ model compared.

    Defaults run all tasks for one tiny (32x32, 8x8 codes) VQ model in about two minutes on
    2 CPU cores, shared preparation included.
    """

    steps: int = 300  # optimisation steps per task network
    batch_size: int = 32
    lr: float = 3e-3
    width: int = 64
    depth: int = 2
    heads: int = 4
    train_items: int = 1000  # first items of train_set encoded and trained on
    eval_items: int = 128  # first items of test_set generated / captioned / completed / asked
    questions_per_image: int = 4
    classifier_steps: int = 400
    classifier_batch_size: int = 32
    temperature: float = 1.0
    top_k: int | None = 32
    top_p: float | None = None
    beam_size: int = 3
    meteor: bool = True  # used only when Java is on PATH
    # torch intra-op threads while tasks run (None: leave torch's setting). These networks
    # are small: on 2 shared CPU cores one thread ran all tasks 4x faster than two, whose
    # per-op synchronisation stalls whenever the other core is busy.
    threads: int | None = 1

    def __post_init__(self):
        counts = (
            "steps",
            "batch_size",
            "width",
            "depth",
            "heads",
            "train_items",
            "questions_per_image",
            "classifier_steps",
            "classifier_batch_size",
            "beam_size",
        )
        for name in counts:
            check_positive(name, getattr(self, name))
        check_positive("lr", self.lr)
        if self.threads is not None:
            check_positive("threads", self.threads)
        if self.eval_items < 2:
            raise ValueError(
                "eval_items must be >= 2 (a Fréchet distance needs a covariance), "
                f"got {self.eval_items}"
            )
        # build the derived settings now, so a bad width/heads or top_p fails before any training
        self.size, self.sampling  # noqa: B018

    @property
    def size(self) -> TransformerSize:
        return TransformerSize(self.width, self.depth, self.heads)

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_k, self.top_p)

    def train_settings(self, seed: int) -> TrainSettings:
        return TrainSettings(steps=self.steps, batch_size=self.batch_size, lr=self.lr, seed=seed)


@dataclass(frozen=True)
class TaskData:
    """Everything the tasks need that does not depend on the VQ model."""

    train_set: object
    test_set: object
    train_items: torch.Tensor  # (N,) train_set indices the tasks train on
    eval_items: torch.Tensor  # (M,) test_set indices they are evaluated on
    train_captions: TextFeatures  # word features of train_set[i]["caption"], i in train_items
    vqa_train: VQAExamples | None  # None (here and below): the data has no ground truth
    vqa_test: VQAExamples | None
    train_maps: torch.Tensor | None  # (N, S, S) int64 semantic maps of the train items
    eval_maps: torch.Tensor | None  # (M, S, S)
    eval_images: torch.Tensor  # (M, 3, S, S) real test images
    scorers: tuple[ImageScorer, ...]  # how generated images are scored (may be empty)

    @property
    def has_ground_truth(self) -> bool:
        return self.vqa_train is not None


def check_captioned_dataset(name: str, dataset) -> None:
    if not callable(getattr(dataset, "captions", None)):
        raise TypeError(
            f"{name} must be a captioned dataset (captions(index)), such as ShapesDataset or a "
            f"lgvq.data loader; got {type(dataset).__name__}"
        )
    if len(dataset) == 0:
        raise ValueError(f"{name} is empty")


GROUND_TRUTH_METHODS = ("scene", "vqa", "semantic_map")


def has_ground_truth(dataset) -> bool:
    """Whether ``dataset`` knows its scenes, questions and semantic maps (as ShapesDataset does)."""
    return all(callable(getattr(dataset, method, None)) for method in GROUND_TRUTH_METHODS)


def semantic_maps(dataset, items: torch.Tensor) -> torch.Tensor:
    return torch.stack([dataset.semantic_map(i) for i in items.tolist()])


def first_items(dataset, count: int) -> torch.Tensor:
    return torch.arange(min(len(dataset), count))


def prepare_task_data(
    train_set,
    test_set,
    text_encoder,
    budget: TaskBudget = TaskBudget(),
    seed: int = 0,
    *,
    device: torch.device | str = "cpu",
    fid_features=None,
) -> TaskData:
    """Encode the texts and, where the data has ground truth, draw the VQA questions and train
    the attribute classifier; once for every model compared.

    fid_features: Inception weights (a local file) or a feature ``nn.Module`` for FID of
    generated images against the real test images (``FIDScorer``); None: no FID.
    """
    with torch_threads(check_budget(budget).threads):
        return _prepare(train_set, test_set, text_encoder, budget, seed, device, fid_features)


def _prepare(train_set, test_set, text_encoder, budget: TaskBudget, seed: int, device, fid_features) -> TaskData:
    check_captioned_dataset("train_set", train_set)
    check_captioned_dataset("test_set", test_set)
    train_items = first_items(train_set, budget.train_items)
    eval_items = first_items(test_set, budget.eval_items)
    if len(eval_items) < 2:
        raise ValueError("test_set needs at least 2 items (a Fréchet distance needs a covariance)")
    captions = [train_set[i]["caption"] for i in train_items.tolist()]
    eval_images = torch.stack([test_set[i]["image"] for i in eval_items.tolist()])
    scorers: list[ImageScorer] = []
    vqa_train = vqa_test = train_maps = eval_maps = None
    if has_ground_truth(train_set) and has_ground_truth(test_set):
        settings = TrainSettings(
            steps=budget.classifier_steps, batch_size=budget.classifier_batch_size, lr=3e-3, seed=seed
        )
        classifier = train_attribute_classifier(train_set, settings, device=device)
        scorers.append(AttributeScorer(classifier, eval_images, scene_labels(test_set, eval_items)))
        questions = dict(questions_per_image=budget.questions_per_image, seed=seed)
        vqa_train = vqa_examples(train_set, train_items, text_encoder, **questions)
        vqa_test = vqa_examples(test_set, eval_items, text_encoder, **questions)
        train_maps, eval_maps = semantic_maps(train_set, train_items), semantic_maps(test_set, eval_items)
    if fid_features is not None:
        scorers.append(FIDScorer(eval_images, fid_features, device))
    return TaskData(
        train_set=train_set,
        test_set=test_set,
        train_items=train_items,
        eval_items=eval_items,
        train_captions=encode_texts(text_encoder, captions, name="train captions"),
        vqa_train=vqa_train,
        vqa_test=vqa_test,
        train_maps=train_maps,
        eval_maps=eval_maps,
        eval_images=eval_images,
        scorers=tuple(scorers),
    )


class TaskRun:
    """One VQ model's codes of the task data, and the networks several tasks share."""

    def __init__(self, model, text_encoder, data: TaskData, budget: TaskBudget, seed: int):
        self.model = model
        self.text_encoder = text_encoder
        self.data = data
        self.budget = budget
        self.seed = seed
        self.train_codes = encode_dataset(model, Subset(data.train_set, data.train_items.tolist()))
        self.eval_codes = encode_dataset(model, Subset(data.test_set, data.eval_items.tolist()))
        self.samples: torch.Tensor | None = None  # the images the last task decoded, for saving

    @property
    def settings(self) -> TrainSettings:
        return self.budget.train_settings(self.seed)

    def seeded(self) -> None:
        """Seed parameter initialisation, so every model's task networks start alike."""
        torch.manual_seed(self.seed)

    @cached_property
    def unconditional(self) -> tuple[UnconditionalGenerator, list[float]]:
        """Trained once per run: unconditional generation and completion both use it."""
        self.seeded()
        generator = UnconditionalGenerator.build(self.model, self.budget.size)
        return generator, generator.fit(self.train_codes, self.settings)

    def image_scores(self, indices: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Decoded images and every scorer's verdict on them against the real test images."""
        images = decode_codes(self.model, indices)
        self.samples = images
        return images, {name: value for scorer in self.data.scorers for name, value in scorer.scores(images).items()}

    @property
    def given_rows(self) -> int:
        """Code rows that completion keeps: the upper half."""
        return code_grid(self.model)[0] // 2

    def lower_psnr(self, images: torch.Tensor) -> float:
        """PSNR to the real test images over the pixel rows that completion generates."""
        pixels_per_code_row = images.shape[2] // code_grid(self.model)[0]
        return psnr(images, self.data.eval_images, from_row=self.given_rows * pixels_per_code_row)


def final_loss(losses: list[float], fraction: float = 0.1) -> float:
    """Mean of the last ``fraction`` of a loss curve: a less noisy final training loss."""
    tail = losses[-max(1, math.ceil(fraction * len(losses))) :]
    return sum(tail) / len(tail)


@torch.no_grad()
def _nll(transformer, codes: CodeDataset, condition: TextFeatures | None = None,
         cells: torch.Tensor | None = None) -> float:
    device = transformer.head.weight.device
    return float(transformer.loss(
        codes.indices.to(device),
        None if condition is None else condition.to(device),
        None if cells is None else cells.to(device),
    ))


def reconstruction_task(run: TaskRun) -> dict[str, float]:
    """The ceiling the VQ decoder allows: scores of the test images' own codes, decoded."""
    images, scores = run.image_scores(run.eval_codes.indices)
    scores.update(psnr=psnr(images, run.data.eval_images), psnr_lower=run.lower_psnr(images))
    for scorer in run.data.scorers:
        scores.update(scorer.real_scores())
    if run.data.has_ground_truth:
        scores.update(
            layout_iou=foreground_iou(images, run.data.eval_maps),
            real_layout_iou=foreground_iou(run.data.eval_images, run.data.eval_maps),
        )
    return scores


def text_to_image_task(run: TaskRun) -> dict[str, float]:
    run.seeded()
    t2i = TextToImage.build(run.model, run.text_encoder, run.budget.size)
    losses = t2i.fit(run.train_codes, run.settings, captions=run.data.train_captions)
    prompts = run.eval_codes.captions
    indices = t2i.generate(prompts, sampling=run.budget.sampling, seed=run.seed)
    _, scores = run.image_scores(indices)
    test_nll = _nll(t2i.transformer, run.eval_codes, t2i.encode_prompts(prompts))
    return {"train_loss": final_loss(losses), "test_nll": test_nll, **scores}


def unconditional_task(run: TaskRun) -> dict[str, float]:
    """Its attribute recall and layout IoU, scored against test scenes it was never told
    about, are the chance levels that text-to-image and semantic synthesis should beat."""
    generator, losses = run.unconditional
    indices = generator.generate(len(run.eval_codes), sampling=run.budget.sampling, seed=run.seed)
    images, scores = run.image_scores(indices)
    if run.data.has_ground_truth:
        scores["layout_iou"] = foreground_iou(images, run.data.eval_maps)
    return {
        "train_loss": final_loss(losses),
        "test_nll": _nll(generator.transformer, run.eval_codes),
        **scores,
    }


def completion_task(run: TaskRun) -> dict[str, float]:
    """The lower half of each test image's codes, sampled given the upper half."""
    generator, _ = run.unconditional
    indices = complete(
        generator.transformer,
        run.eval_codes.indices,
        given_rows=run.given_rows,
        sampling=run.budget.sampling,
        seed=run.seed,
    )
    images, scores = run.image_scores(indices)
    return {**scores, "psnr_lower": run.lower_psnr(images)}


def captioning_task(run: TaskRun) -> dict[str, float]:
    run.seeded()
    captioner = Captioner.build(
        run.model, run.text_encoder, run.train_codes.captions, run.budget.size
    )
    losses = captioner.fit(run.train_codes, run.settings)
    candidates = captioner.generate(run.eval_codes.indices, beam_size=run.budget.beam_size)
    references = [list(run.data.test_set.captions(i)) for i in run.data.eval_items.tolist()]
    meteor = run.budget.meteor and java_available()
    return {
        "train_loss": final_loss(losses),
        **caption_metrics(candidates, references, meteor=meteor),
    }


def semantic_synthesis_task(run: TaskRun) -> dict[str, float]:
    """Images generated from the test images' semantic maps. The map asks for shapes and their
    layout (layout IoU, shape recall), not for colours, so colour recall here is near chance."""
    run.seeded()
    synthesis = SemanticSynthesis.build(run.model, len(SEMANTIC_CLASSES), run.budget.size)
    losses = synthesis.fit(run.train_codes, run.data.train_maps, run.settings)
    indices = synthesis.generate(run.data.eval_maps, sampling=run.budget.sampling, seed=run.seed)
    images, scores = run.image_scores(indices)
    return {
        "train_loss": final_loss(losses),
        "test_nll": _nll(synthesis.transformer, run.eval_codes, cells=synthesis.layout(run.data.eval_maps)),
        "layout_iou": foreground_iou(images, run.data.eval_maps),
        **scores,
    }


def vqa_task(run: TaskRun) -> dict[str, float]:
    run.seeded()
    answerer = QuestionAnswerer.build(run.model, run.text_encoder, run.budget.size)
    losses = answerer.fit(run.train_codes, run.data.vqa_train, run.settings)
    predicted = answerer.predict(run.eval_codes, run.data.vqa_test)
    answers = run.data.vqa_test.answers
    majority = torch.bincount(run.data.vqa_train.answers).argmax()
    return {
        "train_loss": final_loss(losses),
        "accuracy": float((predicted == answers).float().mean()),
        "majority_baseline": float((answers == majority).float().mean()),
    }


TASKS: dict[str, Callable[[TaskRun], dict[str, float]]] = {
    "reconstruction": reconstruction_task,
    "text-to-image": text_to_image_task,
    "unconditional": unconditional_task,
    "completion": completion_task,
    "captioning": captioning_task,
    "vqa": vqa_task,
    "semantic-synthesis": semantic_synthesis_task,
}
GROUND_TRUTH_TASKS = ("vqa", "semantic-synthesis")  # they need scenes, questions and maps
SAMPLES_PER_ROW = 16  # images a row in a saved grid of generated samples


def task_names() -> list[str]:
    return list(TASKS)


def available_tasks(data: TaskData) -> list[str]:
    """Every task the prepared data supports: all of them, less GROUND_TRUTH_TASKS without ground truth."""
    return [name for name in TASKS if data.has_ground_truth or name not in GROUND_TRUTH_TASKS]


def _timed(task: Callable[[TaskRun], dict[str, float]], run: TaskRun) -> dict[str, float]:
    start = time.perf_counter()
    metrics = task(run)
    return {**metrics, "seconds": time.perf_counter() - start}


def check_budget(budget) -> TaskBudget:
    if not isinstance(budget, TaskBudget):
        raise TypeError(f"budget must be a TaskBudget, got {type(budget).__name__}")
    return budget


def _task_data(model, train_set, test_set, text_encoder, budget, seed, data, fid_features) -> TaskData:
    if data is None:
        return prepare_task_data(
            train_set, test_set, text_encoder, budget, seed, device=model_device(model), fid_features=fid_features
        )
    if data.train_set is not train_set or data.test_set is not test_set:
        raise ValueError("data was prepared for other datasets than train_set / test_set")
    if fid_features is not None:
        raise ValueError("pass fid_features to prepare_task_data, not with data that is already prepared")
    return data


def run_task(
    name: str,
    model,
    train_set,
    test_set,
    text_encoder,
    budget: TaskBudget = TaskBudget(),
    seed: int = 0,
    *,
    data: TaskData | None = None,
    fid_features=None,
    samples_to: str | Path | None = None,
) -> dict[str, float]:
    """Train and evaluate one task (see ``task_names()``) on ``model``'s frozen codes.
    ``fid_features``: see ``prepare_task_data``. ``samples_to``: a PNG file that gets a grid of
    the images the task generates (tasks that generate none write nothing); with nothing to
    score them (no ground truth, no ``fid_features``) a warning says they went unscored."""
    check_task_name(name)
    with torch_threads(check_budget(budget).threads):
        data = _task_data(model, train_set, test_set, text_encoder, budget, seed, data, fid_features)
        if name not in available_tasks(data):
            raise ValueError(
                f"{name} needs ground truth ({', '.join(f'{m}(index)' for m in GROUND_TRUTH_METHODS)}, as "
                f"ShapesDataset has); {type(test_set).__name__} has none. Tasks for this data: "
                f"{', '.join(available_tasks(data))}"
            )
        run = TaskRun(model, text_encoder, data, budget, seed)
        metrics = _timed(TASKS[name], run)
        if run.samples is not None and not data.scorers:
            warnings.warn(f"{name}: its {len(run.samples)} generated images are unscored (this data has no ground "
                          "truth to score them against, and no FID features were given)", stacklevel=2)
        if run.samples is not None and samples_to is not None:
            save_image_grid(list(run.samples.split(SAMPLES_PER_ROW)), samples_to, scale=1)
        return metrics


def check_task_name(name: str) -> None:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid names: {', '.join(TASKS)}")


def run_all_tasks(
    model,
    train_set,
    test_set,
    text_encoder,
    budget: TaskBudget = TaskBudget(),
    seed: int = 0,
    *,
    data: TaskData | None = None,
    fid_features=None,
) -> dict[str, dict[str, float]]:
    """{task name: {metric: value}} for every task the data supports (``available_tasks``),
    trained with the same budget and seed. Pass ``data`` (``prepare_task_data``) to share the
    model-independent work between models; ``fid_features``: see ``prepare_task_data``."""
    with torch_threads(check_budget(budget).threads):
        data = _task_data(model, train_set, test_set, text_encoder, budget, seed, data, fid_features)
        run = TaskRun(model, text_encoder, data, budget, seed)
        return {name: _timed(TASKS[name], run) for name in available_tasks(data)}
