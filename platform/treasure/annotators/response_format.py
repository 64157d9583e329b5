"""Format detection on a response: JSON, XML, tables, enumerations, Markdown, LaTeX, code fences.

`detect_format` returns the single most specific format (the taxonomy's `format` is one value)
or None; `detect_code_type` maps the language of the first code fence to `code_type`.

>>> detect_format('{"a": 1}')
'JSON'
>>> detect_format("1. one\\n2. two\\n3. three")
'Enumeration'
>>> detect_code_type("```py\\nprint(1)\\n```")
'python'
"""

from __future__ import annotations

import json
import re

FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+#.-]*)[^\n]*\n(.*?)```", re.S)
TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$", re.M)
TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)+\|?\s*$", re.M)
LIST_ITEM = re.compile(r"^\s*(?:[-*•+]|\d{1,3}[.)]|[a-zA-Z][.)])\s+\S", re.M)
HEADING = re.compile(r"^#{1,6}\s+\S", re.M)
EMPHASIS = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__|`[^`\n]+`")
LATEX = re.compile(r"\\(?:frac|sum|int|sqrt|begin\{|end\{|alpha|beta|cdot|times|left|right|mathbb|mathrm|text)\b|\$\$.+?\$\$|\\\(.+?\\\)|\\\[.+?\\\]", re.S)
XML = re.compile(r"<([A-Za-z][\w:-]*)(\s[^<>]*)?>.*?</\1>", re.S)
MCQ = re.compile(r"^\s*(?:answer\s*[:：]?\s*)?\(?[A-E]\)?[.)]?\s*$|^\s*(?:the\s+)?(?:correct\s+)?answer\s+is\s*[:：]?\s*\(?[A-E]\)?\b", re.I)
STEPS = re.compile(r"(?:^|\n)\s*(?:step\s*\d+|first(?:ly)?,|let'?s think|therefore|so the answer is)", re.I)

# Fence info string → code_type value (the taxonomy's spellings).
CODE_ALIASES = {
    "python": "python", "py": "python", "python3": "python", "javascript": "javascript", "js": "javascript",
    "jsx": "javascript", "node": "javascript", "cpp": "cpp", "c++": "cpp", "cc": "cpp", "hpp": "cpp",
    "cobol": "cobol", "java": "java", "go": "go", "golang": "go", "rust": "rust", "rs": "rust",
    "swift": "swift", "csharp": "csharp", "c#": "csharp", "cs": "csharp", "php": "php",
    "typescript": "typescript", "ts": "typescript", "tsx": "typescript", "bash": "shell", "sh": "shell",
    "shell": "shell", "zsh": "shell", "console": "shell", "c": "c", "h": "c", "kotlin": "kotlin", "kt": "kotlin",
    "ruby": "ruby", "rb": "ruby", "haskell": "haskell", "hs": "haskell", "sql": "sql", "mysql": "sql",
    "postgresql": "sql", "sqlite": "sql",
}


def _is_json(text: str) -> bool:
    body = text.strip()
    fenced = FENCE.fullmatch(body)
    if fenced and fenced.group(1).lower() == "json":
        body = fenced.group(2).strip()
    if not body or body[0] not in "[{":
        return False
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def detect_format(text: str) -> str | None:
    """The response's format (a taxonomy `format` value) or None when it is plain prose."""
    if _is_json(text):
        return "JSON"
    if MCQ.search(text[:200]) and len(text) < 200:
        return "MCQAnswer"
    if len(TABLE_ROW.findall(text)) >= 2 and TABLE_SEP.search(text):
        return "Tabular"
    if XML.search(text) and text.count("<") >= 4:
        return "XML"
    if len(LATEX.findall(text)) >= 2:
        return "Latex"
    if HEADING.search(text) or FENCE.search(text) or len(EMPHASIS.findall(text)) >= 2:
        return "Markdown"
    if len(LIST_ITEM.findall(text)) >= 3:
        return "Enumeration"
    if len(STEPS.findall(text)) >= 2:
        return "ChainOfThought"
    return None


def detect_code_type(text: str) -> str | None:
    """code_type from the first code fence whose info string names a known language."""
    for match in FENCE.finditer(text):
        lang = match.group(1).lower()
        if lang in CODE_ALIASES:
            return CODE_ALIASES[lang]
    return None
