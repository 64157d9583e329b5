"""Rule annotators: spaCy lengths per language, paragraphs, buckets, formats and code types."""

from treasure.annotators.response_format import detect_code_type, detect_format
from treasure.annotators.rules import count_paragraphs, length_markers
from treasure.taxonomy import load_taxonomy


def test_annotate_lengths_english_and_chinese(repo):
    bucket = load_taxonomy(repo / "pipelines/configs/taxonomy_demo.yaml").category("length_bucket")
    en = length_markers(["Hello there. How are you?\n\nFine, thanks!"], "English", bucket)[0]
    assert en == {"length_tokens": 7, "length_sentences": 3, "length_paragraphs": 2, "length_bucket": "concise"}
    zh = length_markers(["天空是蓝色的。这叫做瑞利散射。"], "Chinese", None)[0]
    assert zh["length_sentences"] == 2 and zh["length_tokens"] == 13  # character segmenter, punctuation excluded
    long = length_markers([" ".join(["word"] * 200)], "English", bucket)[0]
    assert long["length_bucket"] == "long"  # demo thresholds 30/80


def test_annotate_unknown_language_falls_back_to_multilingual():
    assert length_markers(["こんにちは。元気ですか。"], "Japanese", None)[0]["length_paragraphs"] == 1


def test_annotate_paragraphs():
    assert count_paragraphs("a\n\nb\n \nc") == 3 and count_paragraphs("one\ntwo") == 1


def test_annotate_formats():
    assert detect_format('{"a": [1, 2]}') == "JSON"
    assert detect_format("```json\n{\"a\": 1}\n```") == "JSON"
    assert detect_format("| a | b |\n|---|---|\n| 1 | 2 |") == "Tabular"
    assert detect_format("<root><item>1</item><item>2</item></root>") == "XML"
    assert detect_format("We have $$\\frac{a}{b}$$ and \\sqrt{2} here") == "Latex"
    assert detect_format("# Title\n\nSome text") == "Markdown"
    assert detect_format("- eggs\n- milk\n- bread") == "Enumeration"
    assert detect_format("B") == "MCQAnswer"
    assert detect_format("Just a plain sentence.") is None


def test_annotate_code_type():
    assert detect_code_type("```rust\nfn main() {}\n```") == "rust"
    assert detect_code_type("```\nno language\n```\n```ts\nlet x = 1\n```") == "typescript"
    assert detect_code_type("no code") is None
