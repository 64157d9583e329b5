"""The marker block: render markers as text, parse them back, and keep user text from forging them.

The grammar, in one place (ASCII only, no special tokens; the model's own tokenizer reads it):

    block    := "<" TAG ">" entry* "</" TAG ">"            TAG is the taxonomy's wrapper tag
    entry    := "<" category ">" value "</" category ">"   block categories, in block order
    prompt   := user_text SEP block                        block appended to the user turn
    output   := block SEP answer                           block prepended to the assistant turn

Rendering is canonical (no spaces, block order: the taxonomy's `block:` list, else taxonomy order;
annotated categories outside the block are left out). Parsing tolerates whitespace around entries
and between the block and the answer, but never invents values: an entry that does not
validate against the taxonomy is reported as a problem and left out.

>>> from treasure.taxonomy import load_taxonomy
>>> tax = load_taxonomy("paper")
>>> render_block({"language": "Spanish", "domain": "Legal"}, tax)
'<TEMPLATE><domain>Legal</domain><language>Spanish</language></TEMPLATE>'
>>> split_output("<TEMPLATE> <domain>Legal</domain> </TEMPLATE>\\n¡Hola!", tax)
ParsedOutput(markers={'domain': 'Legal'}, answer='¡Hola!', problems=[])
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from treasure.taxonomy import Taxonomy

SEP = " "  # between user text and the prompt-side block
ANSWER_SEP = "\n"  # between the completion-side block and the answer
# What replaces a '<' that would open or close a marker tag in user text: a look-alike that no
# Unicode normalization (NFKC) maps back to '<', so neither our parser nor a normalizing tokenizer
# can read it as markup.
NEUTRAL_BRACKET = "\u2039"  # ‹


def render_block(markers: dict[str, Any], taxonomy: Taxonomy, first: dict[str, Any] | None = None) -> str:
    """Canonical block for `markers` (validated, block categories in block order). An empty dict gives ''.

    `first` names the categories that open the block (in block order), the rest follow in block
    order: a completion block lists the markers its prompt gave first, so that at inference the
    requested markers can be written as the start of the model's own block (`prefill_prefix`) and
    the model goes on exactly as it was trained to.

    >>> from treasure.taxonomy import load_taxonomy
    >>> render_block({"language": "Spanish", "domain": "Legal"}, load_taxonomy("paper"), first={"language": "Spanish"})
    '<TEMPLATE><language>Spanish</language><domain>Legal</domain></TEMPLATE>'
    """
    clean = taxonomy.block_markers(markers)
    if not clean:
        return ""
    lead = [k for k in clean if first and k in first]
    ordered = lead + [k for k in clean if k not in lead]
    tag = taxonomy.tag
    body = "".join(f"<{k}>{clean[k]}</{k}>" for k in ordered)
    return f"<{tag}>{body}</{tag}>"


def prefill_prefix(requested: dict[str, Any], taxonomy: Taxonomy) -> str:
    """The start of the model's own block with the requested markers already written (no markers: '').

    The last '>' is left for the model to write: BPE tokenizers merge it with what follows
    (SmolLM2 writes '><' and '></' as single tokens), so a prefix that ended on a lone '>' would
    leave the model in a token sequence it never saw in training.

    >>> from treasure.taxonomy import load_taxonomy
    >>> prefill_prefix({"length_bucket": "concise"}, load_taxonomy("paper"))
    '<TEMPLATE><length_bucket>concise</length_bucket'
    """
    block = render_block(requested, taxonomy)
    if not block:
        return ""
    return block[: -len(f"</{taxonomy.tag}>") - 1]


def render_request(user_text: str, requested: dict[str, Any], taxonomy: Taxonomy, *, prefill: bool = True) -> tuple[str, str]:
    """(user turn, assistant prefix) of one generation request: what serving and evaluation send to the engine.

    The requested markers go into the prompt-side block; with `prefill` they also open the model's
    own completion block, so the model cannot contradict them and writes only the open categories.
    `prefill=False` is the paper's behaviour: the model copies the prompt's markers itself.

    >>> from treasure.taxonomy import load_taxonomy
    >>> render_request("Hi <domain>", {"length_bucket": "long"}, load_taxonomy("paper"))
    ('Hi \u2039domain> <TEMPLATE><length_bucket>long</length_bucket></TEMPLATE>', '<TEMPLATE><length_bucket>long</length_bucket')
    """
    prefix = prefill_prefix(requested, taxonomy) if prefill else ""
    return render_prompt(user_text, requested, taxonomy), prefix


@dataclass
class ParsedOutput:
    """A model output split into its leading marker block and the answer."""

    markers: dict[str, str]
    answer: str
    problems: list[str] = field(default_factory=list)


def _block_re(tag: str) -> re.Pattern:
    return re.compile(rf"<{tag}>(?P<body>.*?)</{tag}>", re.DOTALL)


_ENTRY_RE = re.compile(r"\s*<(?P<name>[A-Za-z_][A-Za-z0-9_]*)>(?P<value>[^<>]*)</(?P=name)>\s*")


def parse_block_body(body: str, taxonomy: Taxonomy) -> tuple[dict[str, str], list[str]]:
    """Parse the inside of a block into validated markers and a list of problems."""
    markers: dict[str, str] = {}
    problems: list[str] = []
    pos = 0
    while pos < len(body):
        m = _ENTRY_RE.match(body, pos)
        if not m:
            rest = body[pos:].strip()
            if rest:
                problems.append(f"unparseable text in block: {rest[:60]!r}")
            break
        pos = m.end()
        name, value = m.group("name"), m.group("value").strip()
        if name not in taxonomy.block_names:
            problems.append(f"unknown category <{name}>" if name not in taxonomy.names else f"category <{name}> is not part of the block")
            continue
        if name in markers:
            problems.append(f"category <{name}> repeated; kept the first")
            continue
        try:
            markers[name] = taxonomy.category(name).validate_value(value)
        except ValueError as e:
            problems.append(str(e))
    order = {n: i for i, n in enumerate(taxonomy.block_names)}
    return dict(sorted(markers.items(), key=lambda kv: order[kv[0]])), problems


def parse_block(text: str, taxonomy: Taxonomy) -> dict[str, str]:
    """Parse a complete block (and nothing else, up to whitespace); ValueError if it is not one."""
    m = _block_re(taxonomy.tag).fullmatch(text.strip())
    if not m:
        raise ValueError(f"not a <{taxonomy.tag}> block: {text[:80]!r}")
    markers, problems = parse_block_body(m.group("body"), taxonomy)
    if problems:
        raise ValueError("; ".join(problems))
    return markers


def split_output(text: str, taxonomy: Taxonomy) -> ParsedOutput:
    """Split a model output into (markers, answer, problems).

    The block must come first (after optional whitespace). A missing or unclosed block is a
    problem, not an error: the answer is then everything after what could be recognised, so a
    dangling marker block never leaks into the returned answer.
    """
    tag = taxonomy.tag
    stripped = text.lstrip()
    open_tag, close_tag = f"<{tag}>", f"</{tag}>"
    if not stripped.startswith(open_tag):
        return ParsedOutput({}, text.strip(), [f"output does not start with {open_tag}"])
    end = stripped.find(close_tag)
    if end < 0:
        # Unclosed block (e.g. generation cut off): drop whatever block text there is.
        body = stripped[len(open_tag):]
        entries = list(_ENTRY_RE.finditer(body))
        markers, problems = parse_block_body("".join(e.group(0) for e in entries), taxonomy)
        return ParsedOutput(markers, "", problems + [f"block is not closed with {close_tag}"])
    markers, problems = parse_block_body(stripped[len(open_tag):end], taxonomy)
    return ParsedOutput(markers, stripped[end + len(close_tag):].strip(), problems)


def strip_blocks(text: str, taxonomy: Taxonomy) -> str:
    """`text` without any marker block: complete blocks anywhere, and an unclosed one at the end.

    A small model sometimes writes its block twice, or starts a new block in the middle of its
    answer; a block is never content, so none is shown to a user.

    >>> from treasure.taxonomy import load_taxonomy
    >>> strip_blocks("a <TEMPLATE><domain>Code</domain></TEMPLATE>b <TEMPLATE><dom", load_taxonomy("paper"))
    'a b '
    """
    open_tag, close_tag = f"<{taxonomy.tag}>", f"</{taxonomy.tag}>"
    while (start := text.find(open_tag)) >= 0:
        end = text.find(close_tag, start)
        text = text[:start] + ("" if end < 0 else text[end + len(close_tag):])
    return text


def split_prompt(text: str, taxonomy: Taxonomy) -> tuple[str, dict[str, str]]:
    """Split a rendered prompt into (user text, markers) where a block ends the prompt."""
    tag = taxonomy.tag
    m = re.search(rf"{SEP}?<{tag}>(?P<body>(?:(?!<{tag}>).)*?)</{tag}>\s*$", text, re.DOTALL)
    if not m:
        return text, {}
    markers, problems = parse_block_body(m.group("body"), taxonomy)
    if problems:
        raise ValueError("; ".join(problems))
    return text[: m.start()], markers


def render_prompt(user_text: str, markers: dict[str, Any], taxonomy: Taxonomy) -> str:
    """User text (neutralized) with the block appended; no markers → the neutralized text alone."""
    safe = neutralize(user_text, taxonomy)
    block = render_block(markers, taxonomy)
    return f"{safe}{SEP}{block}" if block else safe


def render_completion(markers: dict[str, Any], answer: str, taxonomy: Taxonomy, first: dict[str, Any] | None = None) -> str:
    """The training target: full block (the prompt's markers `first`), separator, answer (neutralized as well)."""
    return f"{render_block(markers, taxonomy, first)}{ANSWER_SEP}{neutralize(answer, taxonomy)}"


def _tag_names(taxonomy: Taxonomy) -> set[str]:
    return {n.casefold() for n in taxonomy.names} | {taxonomy.tag.casefold()}


def neutralize(text: str, taxonomy: Taxonomy) -> str:
    """Defang anything in `text` that could open or close a marker tag.

    Any character that NFKC-normalizes to '<' (ASCII, fullwidth, small form...), followed by
    optional whitespace, an optional '/' (or look-alike) and a name that case-insensitively and
    after NFKC matches a category or the wrapper tag, has its bracket replaced by
    NEUTRAL_BRACKET. Other angle brackets (``a < b``, HTML, generics) are left alone.
    Idempotent: neutralize(neutralize(x)) == neutralize(x).
    """
    names = _tag_names(taxonomy)
    out = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if unicodedata.normalize("NFKC", ch) == "<" and _opens_tag(text, i + 1, names):
            out.append(NEUTRAL_BRACKET)
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def tag_padding(ch: str) -> bool:
    """Whitespace or an invisible format character (zero-width space, joiners, BOM): what may pad a
    marker tag's bracket (neutralize here, and the streamed answer's hold-back in treasure.serving.prompting)."""
    return ch.isspace() or unicodedata.category(ch) == "Cf"


def _opens_tag(text: str, j: int, names: set[str]) -> bool:
    n = len(text)
    # Invisible characters count as padding here too ("<\u200b/domain>"), not only inside the name.
    while j < n and tag_padding(text[j]):
        j += 1
    if j < n and unicodedata.normalize("NFKC", text[j]) == "/":
        j += 1
    while j < n and tag_padding(text[j]):
        j += 1
    k = j
    # Collect a candidate name; characters that NFKC-fold into identifier characters count too
    # (fullwidth letters), and zero-width/format characters are skipped as invisible padding.
    chars = []
    while k < n:
        c = text[k]
        if unicodedata.category(c) == "Cf":
            k += 1
            continue
        folded = unicodedata.normalize("NFKC", c)
        if folded and all(x.isalnum() or x == "_" for x in folded):
            chars.append(folded)
            k += 1
        else:
            break
    name = "".join(chars).casefold()
    if not name:
        return False
    # A prefix of a tag name at the very end of the text could be completed by what follows it.
    if k >= n:
        return any(t.startswith(name) for t in names)
    return name in names
