"""Guided thinking: an XML template turned into a grammar for the model's reasoning.

The template's tags and their nesting are fixed by the grammar; the text between
tags is the model's own (the placeholder text is shown to it as guidance). An
element followed by a comment such as "Add more steps as needed" may repeat.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

REPEAT_HINT = re.compile(r"\b(more|repeat|as needed|additional)\b", re.IGNORECASE)
# Free text that cannot open or close a tag (nor break the XML with &), and is not
# empty: a small model otherwise loops on empty elements.
TAG_TEXT = r"/[^<&]*[^<&\s][^<&]*/"
MAX_REPEATS = 8  # a repeating element appears at most this often, so the thinking ends
MIN_ELEMENT_TOKENS = 16


class ThinkingTemplateError(ValueError):
    pass


@dataclass(frozen=True)
class ThinkingTemplate:
    source: str
    root: ET.Element

    @classmethod
    def parse(cls, source: str) -> "ThinkingTemplate":
        parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
        try:
            root = ET.fromstring(source.strip(), parser=parser)
        except ET.ParseError as error:
            raise ThinkingTemplateError(f"thinking_template is not well-formed XML: {error}") from error
        if not isinstance(root.tag, str):
            raise ThinkingTemplateError("thinking_template has no elements")
        return cls(source=source.strip(), root=root)

    def tags(self) -> list[str]:
        """The opening and closing tag of every element."""
        names = sorted({element.tag for element in self.root.iter() if isinstance(element.tag, str)})
        return [tag for name in names for tag in (f"<{name}>", f"</{name}>")]

    def leaf_count(self) -> int:
        return sum(1 for element in self.root.iter() if isinstance(element.tag, str) and not any(
            isinstance(child.tag, str) for child in element))

    def grammar(self, budget: int) -> str:
        """A Lark grammar (llguidance dialect) that admits exactly this structure.

        Each element's text gets at most an equal share of the `budget` tokens: a small
        model can loop inside one element (seen: "You have 1." over and over in <answer>)
        until the budget cuts the thinking off before the elements that follow.
        """
        rules: list[str] = []
        counter = iter(range(10_000))

        def rule_for(element: ET.Element) -> str:
            name = f"e{next(counter)}"
            children = [child for child in element if isinstance(child.tag, str)]
            opening, closing = json.dumps(f"<{element.tag}>"), json.dumps(f"</{element.tag}>")
            if not children:
                rules.append(f"{name}: {opening} tag_text {closing}")
                return name
            parts = []
            items = list(element)
            for index, child in enumerate(items):
                if not isinstance(child.tag, str):
                    continue
                child_rule = rule_for(child)
                following = items[index + 1] if index + 1 < len(items) else None
                repeats = following is not None and not isinstance(following.tag, str) and REPEAT_HINT.search(
                    following.text or ""
                )
                item = f'{child_rule} "\\n"'
                parts.append(f"{item} " + " ".join([f"({item})?"] * (MAX_REPEATS - 1)) if repeats else item)
            rules.append(f'{name}: {opening} "\\n" {" ".join(parts)} {closing}')
            return name

        top = rule_for(self.root)
        share = max(MIN_ELEMENT_TOKENS, budget // self.leaf_count())
        return f"start: {top}\ntag_text[max_tokens={share}]: {TAG_TEXT}\n" + "\n".join(rules) + "\n"

    def instruction(self) -> str:
        return (
            "Before you answer, think step by step, writing your thinking in exactly this XML structure "
            "(replace the text inside each tag with your own; repeat elements where the template says so):\n"
            f"{self.source}"
        )


def close_open_tags(text: str) -> str:
    """The closing tags that a cut-off thinking still needs, innermost first."""
    stack: list[str] = []
    for closing, tag in re.findall(r"<(/?)([A-Za-z_][\w.-]*)>", text):
        if closing:
            if stack and stack[-1] == tag:
                stack.pop()
        else:
            stack.append(tag)
    return "".join(f"</{tag}>" for tag in reversed(stack))
