"""The embedding prompts render to the documented token sequence, and the pooled token is <|im_end|>."""

from __future__ import annotations

import torch

from cafe_core import prompts
from cafe_core.pooling import last_token_index, pool_last_token

# Written out here on purpose (not imported), so a change in cafe_core.prompts fails this test.
DOC_IMAGE_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<image>\nCompress this image in one word:<|im_end|>\n"
    "<|im_start|>assistant\n<|im_end|>"
)
DOC_TEXT_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n{text}Compress this sentence in one word:<|im_end|>\n"
    "<|im_start|>assistant\n<|im_end|>"
)


def test_prompt_strings_match_documentation():
    assert prompts.image_embedding_prompt() == DOC_IMAGE_PROMPT
    assert prompts.text_embedding_prompt("a red circle") == DOC_TEXT_PROMPT.format(text="a red circle")


def _n_image_features(model, batch) -> list[int]:
    """Image feature rows the model itself produces per image (independent of the processor's count)."""
    with torch.no_grad():
        out = model.model.get_image_features(
            **{k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}, return_dict=True
        )
    return [f.shape[0] for f in out.pooler_output]


def test_image_prompt_tokens_on_tiny_onevision(ov_model, mixed_images):
    tok = ov_model.tokenizer
    images = mixed_images[:3]  # square, wide, tall: three different anyres grids
    batch = ov_model.encoder.encode([prompts.image_embedding_prompt()] * len(images), images)
    counts = _n_image_features(ov_model.model, batch)
    assert len(set(counts)) > 1, f"test images should expand to different token counts, got {counts}"
    for row, mask, n in zip(batch["input_ids"], batch["attention_mask"], counts):
        real = row[mask.bool()].tolist()
        expected_text = DOC_IMAGE_PROMPT.replace("<image>", "<image>" * n)
        assert tok.decode(real) == expected_text
        assert real == tok(expected_text, add_special_tokens=False)["input_ids"]
        assert real.count(tok.convert_tokens_to_ids("<image>")) == n
        # ChatML markers are single special tokens, not byte pieces.
        assert real[0] == tok.convert_tokens_to_ids("<|im_start|>")
        assert real[-1] == tok.convert_tokens_to_ids("<|im_end|>")


def test_text_prompt_tokens_on_tiny_onevision(ov_model):
    tok = ov_model.tokenizer
    texts = ["dog", "a small blue star on the right on a gray background"]
    batch = ov_model.encoder.encode([prompts.text_embedding_prompt(t) for t in texts])
    for text, row, mask in zip(texts, batch["input_ids"], batch["attention_mask"]):
        real = row[mask.bool()].tolist()
        assert tok.decode(real) == DOC_TEXT_PROMPT.format(text=text)
        assert real == tok(DOC_TEXT_PROMPT.format(text=text), add_special_tokens=False)["input_ids"]


def test_last_token_index_right_and_left_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 4, 0]
    assert last_token_index(left).tolist() == [4, 4, 4]
    # bool masks work the same
    assert last_token_index(right.bool()).tolist() == [2, 4, 0]


def test_pool_last_token_picks_that_row_and_normalises():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    pooled = pool_last_token(hidden, mask)
    expected = torch.stack([hidden[0, 1], hidden[1, 3]])
    expected = expected / expected.norm(dim=1, keepdim=True)
    torch.testing.assert_close(pooled, expected)


def _pooled_tokens(batch) -> list[int]:
    idx = last_token_index(batch["attention_mask"])
    return batch["input_ids"][torch.arange(len(idx)), idx].tolist()


def test_pooled_token_is_closing_im_end_for_real_batches(cafe_models, mixed_images):
    for arch, model in cafe_models.items():
        im_end = model.tokenizer.convert_tokens_to_ids("<|im_end|>")
        texts = ["x", "a photo of a red circle on the left and a small blue star on the right"]
        text_batch = model.encoder.encode([prompts.text_embedding_prompt(t) for t in texts])
        image_batch = model.encoder.encode([prompts.image_embedding_prompt()] * 3, mixed_images[:3])
        mm_batch = model.encoder.encode([prompts.multimodal_embedding_prompt(t) for t in texts], mixed_images[:2])
        assert (text_batch["attention_mask"] == 0).any(), "the batch should contain padding"
        if arch == "llava-onevision":  # anyres: different image sizes give different lengths
            assert (image_batch["attention_mask"] == 0).any()
        for batch in (text_batch, image_batch, mm_batch):
            assert _pooled_tokens(batch) == [im_end] * len(batch["input_ids"])

        # Left padding (as generation pipelines use) pools the same token.
        tok = model.tokenizer
        old = tok.padding_side
        try:
            tok.padding_side = "left"
            left = tok([prompts.text_embedding_prompt(t) for t in texts], padding=True, return_tensors="pt",
                       add_special_tokens=False)
        finally:
            tok.padding_side = old
        assert left["attention_mask"][:, 0].tolist() == [0, 1]
        assert _pooled_tokens(left) == [im_end, im_end]
