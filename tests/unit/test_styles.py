"""Saved styles as A1111 keeps them: reading styles.csv (quotes, extra columns, comments), applying
them ({prompt} or ", "), a malformed file named by its line, and saving next to the others."""

import pytest

from app.errors import InvalidRequest
from app.generation.requests import GenerationRequest
from app.generation.styles import Style, StyleBook, expanded, merged, parsed_styles, styles_text, with_styles


def test_a_style_with_prompt_slot_wraps_the_prompt_and_others_are_appended():
    assert merged("masterpiece, {prompt}, 8k", "a cat") == "masterpiece, a cat, 8k"
    assert merged("oil painting", "a cat ") == "a cat, oil painting"
    assert merged("", "a cat") == "a cat"                       # an empty style adds nothing
    assert merged("oil painting", "") == "oil painting"          # no dangling ", "
    styles = [Style("a", "{prompt}, sharp", "blurry"), Style("b", "by Monet", "{prompt}, ugly")]
    assert expanded("a cat", "", styles) == ("a cat, sharp, by Monet", "blurry, ugly")  # in the order chosen


def test_quoted_fields_extra_columns_comments_and_a_bom_are_read_as_a1111_does(tmp_path):
    text = ('\ufeffname,prompt,negative_prompt,notes\n'
            '"Film, grainy","{prompt}, 35mm, ""Kodak""\nportra",lowres,extra column\n'
            '# a comment,ignored,\n'
            '\n'
            'Bare,only a prompt\n')
    styles = parsed_styles(text.removeprefix("\ufeff"), tmp_path / "styles.csv")
    assert styles == [Style("Film, grainy", '{prompt}, 35mm, "Kodak"\nportra', "lowres"), Style("Bare", "only a prompt", "")]
    assert parsed_styles(styles_text(styles), tmp_path / "s.csv") == styles      # what we write reads back
    (tmp_path / "bom.csv").write_text(text, encoding="utf-8")
    assert StyleBook(tmp_path / "bom.csv").styles() == styles


@pytest.mark.parametrize("text, line", [
    ('name,prompt,negative_prompt\ngood,a,b\nbroken,"never closed,x\nlater,c,d\n', 3),
    ("prompt,negative_prompt\nx,y\n", 1),
    (b"name,prompt\nok,fine\nbad,caf\xe9\n", 3),
])
def test_a_malformed_file_is_named_by_its_line_and_gives_no_styles(tmp_path, caplog, text, line):
    path = tmp_path / "styles.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    book = StyleBook(path)  # never raises: the app starts
    assert book.styles() == []
    assert f"at line {line}" in book.problem() and str(path) in book.problem()
    assert f"at line {line}" in caplog.text                              # and the log says it
    with pytest.raises(InvalidRequest, match=f"Fix line {line}"):
        book.save(Style("new", "x"))
    assert path.read_bytes() == (text if isinstance(text, bytes) else text.encode())  # never overwritten


def test_save_keeps_the_others_replaces_by_name_and_lists_it(tmp_path):
    path = tmp_path / "sub" / "styles.csv"
    book = StyleBook(path)
    assert book.styles() == [] and book.problem() is None              # no file yet: no styles, no problem
    book.save(Style("Cinematic", "{prompt}, film still", "cartoon"))
    book.save(Style("Watercolour", "watercolour", ""))
    book.save(Style(" Cinematic ", "{prompt}, anamorphic", "cgi"))     # same name: replaced in place
    assert StyleBook(path).styles() == [Style("Cinematic", "{prompt}, anamorphic", "cgi"), Style("Watercolour", "watercolour", "")]
    assert path.read_text().startswith("name,prompt,negative_prompt\n")
    assert not list(path.parent.glob("*.tmp"))
    with pytest.raises(InvalidRequest, match="name"):
        book.save(Style("  ", "x"))


def test_a_file_edited_by_hand_is_read_again(tmp_path):
    path = tmp_path / "styles.csv"
    book = StyleBook(path)
    path.write_text("name,prompt,negative_prompt\nHand,by hand,\n")
    assert [style.name for style in book.styles()] == ["Hand"]


def test_a_request_is_expanded_once_and_unknown_names_are_refused(tmp_path):
    book = StyleBook(tmp_path / "styles.csv")
    book.save(Style("Sharp", "{prompt}, sharp focus", "blur"))
    request = with_styles(GenerationRequest(prompt="a cat", negative_prompt="dog", styles=["Sharp"]), book)
    assert (request.prompt, request.negative_prompt, request.styles) == ("a cat, sharp focus", "dog, blur", [])
    assert with_styles(request, book) is request                        # the names are consumed
    with pytest.raises(InvalidRequest, match="no saved style called 'Dull'.*Saved styles: Sharp"):
        with_styles(GenerationRequest(prompt="x", styles=["Dull"]), book)
    with pytest.raises(InvalidRequest, match="list of saved styles"):
        with_styles(GenerationRequest(prompt="x", styles=[3]), book)


def test_hires_prompts_are_styled_too_and_empty_ones_stay_empty(tmp_path):
    book = StyleBook(tmp_path / "styles.csv")
    book.save(Style("Sharp", "{prompt}, sharp focus", "blur"))
    request = with_styles(GenerationRequest(prompt="a cat", hr_prompt="a cat, detailed", styles=["Sharp"]), book)
    assert (request.hr_prompt, request.hr_negative_prompt) == ("a cat, detailed, sharp focus", "")
    plain = with_styles(GenerationRequest(prompt="a cat", styles=["Sharp"]), book)
    assert (plain.hr_prompt, plain.hr_negative_prompt) == ("", "")
