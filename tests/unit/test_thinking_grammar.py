import llguidance

from gallama.agentic.thinking import MIN_ELEMENT_TOKENS, ThinkingTemplate

TEMPLATE = "<plan><goal>the goal</goal><steps><step>one</step><!-- more steps as needed --></steps><answer>x</answer></plan>"


def test_each_element_gets_a_share_of_the_budget():
    template = ThinkingTemplate.parse(TEMPLATE)
    assert template.leaf_count() == 3
    grammar = template.grammar(300)
    assert "tag_text[max_tokens=100]" in grammar
    assert f"tag_text[max_tokens={MIN_ELEMENT_TOKENS}]" in template.grammar(10)
    assert llguidance.LLMatcher.validate_grammar(llguidance.grammar_from("lark", grammar)) == ""  # no errors


def test_tags_are_every_element_opening_and_closing():
    template = ThinkingTemplate.parse("<thinking><step>first</step><!-- more steps --><answer>a</answer></thinking>")
    assert template.tags() == ["<answer>", "</answer>", "<step>", "</step>", "<thinking>", "</thinking>"]
