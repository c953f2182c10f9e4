import shutil

from evalkit.models import load_model
from evalkit.provenance import chat_template_fingerprint, model_hash, sha256_file


def test_model_hash_follows_the_weights_not_the_card(micro_model, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(micro_model, copy)
    before = model_hash(copy)
    assert before == model_hash(micro_model)
    (copy / "README.md").write_text("a model card")
    assert model_hash(copy) == before
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert model_hash(copy) != before


def test_chat_template_fingerprint_changes_with_the_template(micro_model):
    _, tokenizer = load_model(micro_model)
    first = chat_template_fingerprint(tokenizer)
    tokenizer.chat_template = tokenizer.chat_template + " "
    assert chat_template_fingerprint(tokenizer) != first
    tokenizer.chat_template = None
    assert chat_template_fingerprint(tokenizer) == "none"


def test_sha256_file_is_hashlib_of_the_bytes(tmp_path):
    import hashlib

    file = tmp_path / "data.bin"
    file.write_bytes(b"x" * (3 << 20))  # more than one read
    assert sha256_file(file) == hashlib.sha256(file.read_bytes()).hexdigest()
