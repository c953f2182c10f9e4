"""The embedded base model: a byte-level BPE tokenizer and a small GPT-2 trained on chit-chat.

It stands in for a pre-trained chat model so the whole loop runs offline; any Hugging Face
causal LM directory replaces it. The result is cached by its config: asking again for the same
config returns the saved directory at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from evalkit.errors import EvalkitError
from evalkit.workspace import Workspace, atomic_dir
from finetune.data.split import seeded_key

log = logging.getLogger(__name__)

BOS = "<|endoftext|>"
EOS = "<|end|>"  # closes every turn, so generation stops after the assistant's turn
SPECIAL_TOKENS = [BOS, EOS, "<|system|>", "<|user|>", "<|assistant|>"]

# {% generation %} marks the assistant's tokens, so trainers can mask everything else
# (transformers' return_assistant_tokens_mask, TRL's assistant_only_loss).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|end|>' }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

METADATA_FILE = "evalkit_base.json"


@dataclass(frozen=True)
class BaseModelConfig:
    """What decides the base model; its hash names the cache entry."""

    size: str = "default"
    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    context: int = 256  # n_positions, and the length of the packed training blocks
    batch_size: int = 16
    max_steps: int = 500  # 2M tokens, about half the corpus: ~3.5 minutes on 2 CPU cores
    learning_rate: float = 3e-3  # small models take a high rate; cosine decay to 10%
    warmup_steps: int = 50
    max_conversations: int | None = None  # None: the whole chit-chat corpus
    validation_fraction: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise EvalkitError(f"n_embd ({self.n_embd}) must be a multiple of n_head")
        if not 0 < self.validation_fraction < 1:
            raise EvalkitError("validation_fraction must be between 0 and 1")

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


SIZES = {
    "default": BaseModelConfig(),
    # Trains in seconds: for tests.
    "micro": BaseModelConfig(
        size="micro",
        vocab_size=400,
        n_layer=2,
        n_head=2,
        n_embd=32,
        context=64,
        batch_size=8,
        max_steps=40,
        warmup_steps=5,
        max_conversations=400,
    ),
}


def split_conversations(
    conversations: list[dict], fraction: float, seed: int
) -> tuple[list[dict], list[dict]]:
    """Train/validation split by a seeded hash of the conversation id: stable as data grows."""
    train, validation = [], []
    for conv in conversations:
        bucket = seeded_key(seed, conv["id"]) / 2**32
        (validation if bucket < fraction else train).append(conv)
    return train, validation


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer (as GPT-2's) with the chat special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, pad_token=BOS, unk_token=None
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def render(tokenizer, conversations: list[dict]) -> list[str]:
    """Conversations as text through the chat template, as every part renders them."""
    return [tokenizer.apply_chat_template(c["messages"], tokenize=False) for c in conversations]


def _packed_blocks(tokenizer, texts: list[str], context: int):
    """All texts, each behind a BOS, concatenated and cut into blocks of ``context`` tokens."""
    import torch

    ids: list[int] = []
    for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.append(tokenizer.bos_token_id)
        ids.extend(encoded)
    n_blocks = len(ids) // context
    return torch.tensor(ids[: n_blocks * context]).view(n_blocks, context)


def _train(config: BaseModelConfig, tokenizer, train_texts: list[str]):
    import torch
    from tqdm.auto import tqdm
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(config.seed)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=config.context,
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    blocks = _packed_blocks(tokenizer, train_texts, config.context)
    if len(blocks) == 0:
        raise EvalkitError("the training corpus is shorter than one block of the context length")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.1)

    def lr_factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(blocks), generator=generator)
    model.train()
    started = time.perf_counter()
    bar = tqdm(range(config.max_steps), desc="training base model", disable=None)
    for step in bar:
        start = (step * config.batch_size) % len(blocks)
        if start + config.batch_size > len(blocks):  # a new epoch: a new seeded order
            order = torch.randperm(len(blocks), generator=generator)
        index = order[start : start + config.batch_size]
        batch = blocks[index]
        loss = model(input_ids=batch, attention_mask=torch.ones_like(batch), labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    elapsed = time.perf_counter() - started
    model.eval()
    tokens = config.max_steps * config.batch_size * config.context
    return model, {
        "train_seconds": round(elapsed, 1),
        "train_tokens": tokens,
        "final_train_loss": round(loss.item(), 4),
    }


def base_model_dir(workspace: Workspace, config: BaseModelConfig) -> Path:
    return workspace.models_dir / f"base-{config.size}-{config.key()}"


def build_base_model(
    workspace: Workspace,
    config: BaseModelConfig | str = "default",
    *,
    conversations: list[dict] | None = None,
    force: bool = False,
) -> Path:
    """Train (or fetch from the cache) the base model and return its directory.

    >>> path = build_base_model(open_workspace(), "micro")
    """
    if isinstance(config, str):
        config = base_model_config(config)
    out = base_model_dir(workspace, config)
    if (out / METADATA_FILE).is_file() and not force:
        log.info("base model cached at %s", out)
        return out

    import torch

    from evalkit.perplexity import bits_per_byte, text_nll, token_perplexity
    from evalkit.provenance import chat_template_fingerprint, model_hash
    from finetune.data.corpora import load_chitchat

    if conversations is None:
        conversations = load_chitchat()
    conversations = conversations[: config.max_conversations]
    train, validation = split_conversations(conversations, config.validation_fraction, config.seed)
    if not validation:
        raise EvalkitError("no conversation fell in the validation split: use more conversations")
    utterances = [m["content"] for c in train for m in c["messages"]]
    tokenizer = train_tokenizer(utterances, config.vocab_size)
    model, stats = _train(config, tokenizer, render(tokenizer, train))

    scores = text_nll(model, tokenizer, render(tokenizer, validation), progress=True)
    nll, tokens, nbytes = ([getattr(s, f) for s in scores] for f in ("nll", "tokens", "bytes"))
    metrics = {
        "validation_conversations": len(validation),
        "validation_tokens": int(sum(tokens)),
        "validation_perplexity": round(token_perplexity(nll, tokens), 4),
        "validation_bits_per_byte": round(bits_per_byte(nll, nbytes), 4),
        **stats,
    }

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        metadata = {
            "config": asdict(config),
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_conversations": len(train),
            "metrics": metrics,
            "model_hash": model_hash(tmp),
            "chat_template_fingerprint": chat_template_fingerprint(tokenizer),
            "torch": torch.__version__,
        }
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")

    atomic_dir(out, write)
    return out


def base_model_config(size: str, **overrides) -> BaseModelConfig:
    """A named size, with optional field overrides (``max_steps=...``)."""
    if size not in SIZES:
        raise EvalkitError(f"unknown base model size {size!r}", hint=f"choose {' or '.join(SIZES)}")
    return replace(SIZES[size], **overrides)


def read_metadata(path: str | Path) -> dict:
    """The config and validation metrics saved beside a base model."""
    file = Path(path) / METADATA_FILE
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise EvalkitError(f"cannot read {file}: {exc}", hint="rebuild with --force") from exc


def summary(path: str | Path) -> str:
    """A few lines on a base model: where it is, its size, hashes and validation perplexity."""
    meta = read_metadata(path)
    metrics = meta["metrics"]
    return (
        f"base model: {path}\n"
        f"  parameters: {meta['parameters']:,}   model hash: {meta['model_hash'][:12]}   "
        f"chat template: {meta['chat_template_fingerprint'][:12]}\n"
        f"  validation perplexity: {metrics['validation_perplexity']:.2f} "
        f"({metrics['validation_bits_per_byte']:.3f} bits/byte) on "
        f"{metrics['validation_conversations']} held-out chit-chat conversations"
    )
