"""A tiny BERT WordPiece tokenizer, built here with no network: what CLIPA's text side reads (open_clip's
HFTokenizer over bert-base-uncased) at a few hundred ids, with bert-base-uncased's special-token ids."""

import random

# bert-base-uncased's layout: [PAD] 0, [unused0..98] 1..99, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103
SPECIAL_TOKENS = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD_ID, SEP_ID = 0, 102


def _corpus() -> list[str]:
    syllables = "ka to ri mo su ne pa lu shi ve an or ing the cat dog sky red blu ph x qu zz é ü 猫".split()
    rng = random.Random(0)
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(800)]
    marks = [".", ",", "!", "?", "'s", ""]
    return [" ".join(rng.choices(words, k=rng.randint(3, 12))) + rng.choice(marks) for _ in range(3000)]


def tiny_bert_tokenizer(directory, vocab_size: int = 600):
    """A lower-casing WordPiece tokenizer trained here, saved by transformers' BertTokenizerFast to ``directory``
    (tokenizer.json, tokenizer_config.json naming its special tokens, as bert-base-uncased loads). Returns it."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(_corpus(), vocab_size=vocab_size, min_frequency=1, special_tokens=SPECIAL_TOKENS)
    directory.mkdir(parents=True)
    trainer.save(str(directory / "wordpiece.json"))
    BertTokenizerFast(tokenizer_file=str(directory / "wordpiece.json")).save_pretrained(directory)
    (directory / "wordpiece.json").unlink()
    return directory
