from gallama.agentic.text_stream import StopStringCutter, Utf8Stream, partial_suffix


def feed_all(cutter, pieces):
    out = "".join(cutter.feed(p) for p in pieces)
    if cutter.matched is None:
        out += cutter.flush()
    return out


def test_stop_split_across_pieces_is_cut():
    cutter = StopStringCutter(["STOP"])
    assert feed_all(cutter, ["hello S", "TO", "P world"]) == "hello "
    assert cutter.matched == "STOP"


def test_partial_stop_prefix_is_released_when_it_does_not_match():
    cutter = StopStringCutter(["STOP"])
    assert cutter.feed("abc ST") == "abc "
    assert cutter.feed("ART") == "START"
    assert cutter.matched is None


def test_keep_stop_returns_the_stop_string():
    cutter = StopStringCutter(["</end>"], keep_stop=True)
    assert feed_all(cutter, ["x </e", "nd> ignored"]) == "x </end>"


def test_earliest_of_several_stops_wins():
    cutter = StopStringCutter(["bb", "a"])
    assert feed_all(cutter, ["xxbba"]) == "xx"
    assert cutter.matched == "bb"


def test_held_text_flushes_at_end():
    cutter = StopStringCutter(["STOP"])
    assert feed_all(cutter, ["end S"]) == "end S"


def test_utf8_split_character_waits():
    stream = Utf8Stream()
    data = "é€".encode()
    assert stream.feed(data[:1]) == ""
    assert stream.feed(data[1:3]) == "é"
    assert stream.feed(data[3:]) == "€"
    assert stream.flush() == ""


def test_partial_suffix_holds_back_only_what_could_begin_a_tag():
    assert partial_suffix("thinking <ste", ["<step>", "</step>"]) == 4
    assert partial_suffix("thinking </", ["<step>", "</step>"]) == 2
    assert partial_suffix("done <step>", ["<step>"]) == 0  # a whole tag is not held
    assert partial_suffix("a < b", ["<step>"]) == 0
    assert partial_suffix("", ["<step>"]) == 0
