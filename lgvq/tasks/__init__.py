"""Downstream tasks on a frozen VQ model's codes: text-to-image, unconditional generation,
completion, captioning, VQA and semantic-map-conditioned synthesis, with ground-truth metrics on the embedded shapes data and,
on real captioned data, caption metrics and FID (with local Inception weights).

    codes = encode_dataset(vq_model, dataset)            # once per VQ model
    t2i = TextToImage.build(vq_model, text_encoder); t2i.fit(codes, TrainSettings())
    images = decode_codes(vq_model, t2i.generate(["a red circle"], sampling=Sampling(top_k=32)))
    results = run_all_tasks(vq_model, train_set, test_set, text_encoder, TaskBudget(), seed=0)
    results = run_all_tasks(..., fid_features="pt_inception-2015-12-05-6726825d.pth")  # real data
"""

from lgvq.tasks.autoregressive import (
    CodeTransformer,
    Sampling,
    filter_logits,
    fit_autoregressive,
    sample_next,
)
from lgvq.tasks.captioning import Captioner, CaptionNetwork
from lgvq.tasks.codes import (
    CodeDataset,
    check_code_indices,
    decode_codes,
    encode_dataset,
    frozen_codebook,
)
from lgvq.tasks.completion import complete
from lgvq.tasks.evaluation import (
    ATTRIBUTES,
    AttributeClassifier,
    attribute_labels,
    caption_metrics,
    foreground_iou,
    frechet_distance,
    normalise_caption,
    presence_recall,
    psnr,
    scene_labels,
    train_attribute_classifier,
)
from lgvq.tasks.image_scoring import AttributeScorer, FIDScorer, ImageScorer
from lgvq.tasks.layers import CodeEmbedding, TransformerSize
from lgvq.tasks.semantic_synthesis import SemanticSynthesis, layout_features
from lgvq.tasks.runner import (
    TASKS,
    TaskBudget,
    TaskData,
    available_tasks,
    prepare_task_data,
    run_all_tasks,
    run_task,
    task_names,
)
from lgvq.tasks.text_features import TextFeatures, encode_text_table, encode_texts
from lgvq.tasks.text_to_image import TextToImage
from lgvq.tasks.training import TrainSettings, train_network
from lgvq.tasks.unconditional import UnconditionalGenerator
from lgvq.tasks.vqa import QuestionAnswerer, VQAExamples, VQANetwork, vqa_examples

__all__ = [
    "ATTRIBUTES",
    "TASKS",
    "AttributeClassifier",
    "AttributeScorer",
    "CaptionNetwork",
    "Captioner",
    "CodeDataset",
    "CodeEmbedding",
    "CodeTransformer",
    "FIDScorer",
    "ImageScorer",
    "QuestionAnswerer",
    "SemanticSynthesis",
    "Sampling",
    "TaskBudget",
    "TaskData",
    "TextFeatures",
    "TextToImage",
    "TrainSettings",
    "TransformerSize",
    "UnconditionalGenerator",
    "VQAExamples",
    "VQANetwork",
    "attribute_labels",
    "available_tasks",
    "caption_metrics",
    "check_code_indices",
    "complete",
    "decode_codes",
    "encode_dataset",
    "encode_text_table",
    "encode_texts",
    "filter_logits",
    "foreground_iou",
    "fit_autoregressive",
    "frechet_distance",
    "frozen_codebook",
    "layout_features",
    "normalise_caption",
    "prepare_task_data",
    "presence_recall",
    "psnr",
    "run_all_tasks",
    "run_task",
    "sample_next",
    "scene_labels",
    "task_names",
    "train_attribute_classifier",
    "train_network",
    "vqa_examples",
]
