import pytest

from gallama.agentic.chat_template import CHATML_TEMPLATE, ChatTemplate, TemplateError


def test_chatml_renders_generation_prompt():
    text = ChatTemplate(CHATML_TEMPLATE).render([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_hf_globals_are_available():
    template = ChatTemplate(
        "{{ bos_token }}{{ messages[0] | tojson }}{{ strftime_now('%Y') | length }}{{ eos_token }}",
        bos_token="<s>", eos_token="</s>",
    )
    assert template.render([{"role": "user", "content": "é"}]) == '<s>{"role": "user", "content": "é"}4</s>'


def test_raise_exception_is_a_template_error():
    template = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(TemplateError, match="roles must alternate"):
        template.render([])


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.append(1) }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    ],
)
def test_sandbox_blocks_escapes(source):
    with pytest.raises(TemplateError):
        ChatTemplate(source).render([{"role": "user", "content": "x"}])


def test_syntax_error_is_reported():
    with pytest.raises(TemplateError, match="does not compile"):
        ChatTemplate("{% for %}")
