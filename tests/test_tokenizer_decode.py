"""ChatGLM3 decoding identical to the official tokenizer.

``OFFICIAL`` holds id sequences and the text THUDM's ``ChatGLMTokenizer.decode`` (chatglm3-6b
``tokenization_chatglm.py``, the real ``tokenizer.model`` and the fixture's ``tokenizer_config.json``,
under transformers 4.40.2) returned for them, with skip_special_tokens False and True alike: its
transformers special-token map is empty (the class overrides ``eos_token``/``pad_token``/``unk_token``
as properties, so the private values transformers reads stay unset), so skipping removes nothing.
Officially every id becomes a piece (special tokens their names; eos, bos and pad "") and SentencePiece
decodes all pieces at once, which keeps the "▁" after a special token as a space.
"""

from __future__ import annotations

import pytest

from glmtune.tokenizer import TokenizerError

# (ids, official text): the example, lone eos/bos/pad, then random mixes of special tokens,
# byte-fallback pieces, "▁", "\n" and ordinary pieces.
OFFICIAL = [
    ([64790, 64792, 64795, 30910, 13, 36474, 54591, 64796], "[gMASK]sop<|user|> \n 你好<|assistant|>"),
    ([0], ""),
    ([1], ""),
    ([2], ""),
    ([], ""),
    ([30910], ""),
    ([13], "\n"),
    ([64795], "<|user|>"),
    ([30910, 64795, 30910], "<|user|> "),
    ([0, 30910, 36474], " 你"),
    ([64796, 0, 30910, 13], "<|assistant|> \n"),
    ([36474, 54591, 31123, 31661, 30992, 13755, 265, 8515, 13, 13, 265, 6315, 9427, 12, 31139, 30910, 243, 163, 131, 142, 30910, 34496], "你好，世界! Hello  world\n\n  code():\t🙂 𠀋 混合"),
    ([64790, 61558, 2291, 5503, 64794, 18, 1041, 2], "[gMASK]餾 Ke shut<|system|>\u000father"),
    ([62229, 206], "∉�"),
    ([73, 25859, 64789, 43689], "F generosity[MASK]我们有"),
    ([163, 64793, 30930, 42121, 64791, 63386, 45594, 13, 13, 31002], "�eop.副作用[sMASK]萻或多\n\n<"),
    ([2, 2, 34496, 19843, 1714, 32840, 64791, 13, 13, 64797, 39395, 64795], "混合 clearing money市民[sMASK]\n\n<|observation|>四是<|user|>"),
    ([21372, 38980, 97, 42766, 2], "Dell联系电话^日月"),
    ([64791, 64794, 8255, 64793, 54591, 36718, 39210, 64795, 54974, 64794, 64791, 37652], "[sMASK]<|system|> protesteop好 天附加<|user|>施<|system|>[sMASK]被评为"),
    ([64796, 144, 13, 30910, 45305], "<|assistant|>�\n 基督徒"),
    ([34719, 31123, 243, 31002], "敏感，�<"),
    ([29120, 31661, 3598, 109, 64795, 50489, 30930, 52703], "exploited世界 nationj<|user|>进气.持有人"),
    ([64794, 10781, 64791, 30930], "<|system|> gang[sMASK]."),
    ([61291, 30910, 235, 30930, 6159], "韜 �. commission"),
    ([41950, 50446, 64795, 30910, 64794], "村委会监护人<|user|> <|system|>"),
    ([48379, 64794, 2743], "献策<|system|> ut"),
    ([31002, 51134, 13755, 64793, 34502, 8515, 6771], "<全国人大常委会 Helloeop迎接world guests"),
    ([8184], "quad"),
    ([18029, 30930, 60164, 24064, 30910, 53436, 36554, 30910, 3], "crowded.閥 borrowed 销售的分局 \u0000"),
    ([64797, 64792, 13, 55914, 3296, 45377, 28993, 13, 13], "<|observation|>sop\n颜 details膝盖lore\n\n"),
    ([30910, 61769, 0, 64794, 64791, 64794, 40344, 64790], "ʎ<|system|>[sMASK]<|system|>而被[gMASK]"),
    ([31002, 62494, 31139, 46319, 6983, 64791, 13, 31123, 23929, 30910, 27669], "<啭🙂迈进 Trust[sMASK]\n，oslav ktet"),
    ([64789, 64794, 57919, 5189, 46212, 35629, 26341, 35349], "[MASK]<|system|>蹲 launch实务进了 Mé境外"),
    ([58304, 14280, 6176, 64795, 181, 31002, 30910, 28092, 64794, 51227, 42263, 64789], "跋People mine<|user|>�< opters<|system|>委员会的分化[MASK]"),
    ([57092, 15311, 42803], "隧 supportive班长"),
    ([169, 265, 31002, 44190, 64794, 30111], "�  <时隔<|system|>ierre"),
    ([30992, 30071, 64159, 53694, 30910, 31002, 5752], "! bait싱一户 <ні"),
    ([31002, 208, 31002, 64793, 31002], "<�<eop<"),
    ([30910, 53795, 15856, 31139, 36870, 52911, 4, 142, 64797], "建構 ambitious🙂还需要新规\u0001�<|observation|>"),
    ([64790, 64796, 5495, 64794, 24485, 31002, 64790, 4790, 64796, 30992, 9068, 133], "[gMASK]<|assistant|> marriage<|system|>ENG<[gMASK]known<|assistant|>!ader�"),
    ([6125, 0, 2], "iments"),
    ([64793, 64791, 55269, 7847, 64789, 64791, 28512], "eop[sMASK]录égorie[MASK][sMASK] Comes"),
    ([1, 56567, 12941, 31002, 2981, 9428, 13, 64790, 4557, 10232, 56688, 8515], "荡 Stewart< prior divided\n[gMASK] ign neighb宙world"),
    ([38262, 1, 44394, 64795, 148, 15374, 37960, 30554], "页面写下<|user|>� Yellow最后的üss"),
    ([16225, 30910, 47910, 64792, 64793, 64790, 15337, 2, 12778, 31123, 17703], "braska 实现的sopeop[gMASK]Gen claiming， enterprises"),
    ([117, 64789, 64796, 2, 40983, 28399], "r[MASK]<|assistant|>团长 vitro"),
    ([64796, 64797, 17609, 6107, 45729, 28, 21453, 30930, 2, 30992], "<|assistant|><|observation|>Left craft是美国\u0019raul.!"),
    ([64789], "[MASK]"),
    ([64790, 64792, 243, 54591], "[gMASK]sop�好"),
    ([30930, 64796], ".<|assistant|>"),
    ([16870, 9427, 30910, 9996, 64311, 1, 13651, 13, 64790, 62698, 31002, 142], "abundance():  weird침 PD\n[gMASK]庥<�"),
    ([64790, 64789, 0, 64792, 30930, 197, 64792, 31139, 29052, 13, 47], "[gMASK][MASK]sop.�sop🙂Comb\n,"),
    ([46027, 64794, 1], "画画<|system|>"),
    ([36410, 0, 51828], "不超过美妙"),
    ([30333, 37092, 30910, 57066, 27516, 52536, 31002], "brahim门诊 炭 kidding产业园区<"),
    ([75, 4506, 30822, 31139, 51828, 64794, 19475, 239], "H Roadneck🙂美妙<|system|> stepping�"),
    ([40605, 107], "一点点h"),
    ([30930, 51164, 50802, 47537, 30910, 186, 53867, 6315, 30910, 13, 64796, 51485], ".人的生活短的一切则会迎刃而解 �我不能code \n<|assistant|>這項"),
    ([29622, 34944, 30910, 48], "Winners科普 -"),
    ([17018, 21145, 101, 64790, 57188, 0, 31002, 54591, 29, 12], "deux giftedb[gMASK]堅<好\u001a\t"),
    ([12, 64789, 44153, 16138, 31661, 48780, 18799, 17859, 31002, 31002], "\t[MASK]说他 Kan世界两款 Montgomery tales<<"),
    ([31002, 265, 199, 31002, 64797, 0, 4, 30930, 53652, 13, 61339, 13], "<  �<<|observation|>\u0001.幸存\n滷\n"),
]


@pytest.mark.parametrize("ids,text", OFFICIAL)
def test_decode_matches_the_official_tokenizer(official_tokenizer, ids, text):
    assert official_tokenizer.decode(ids) == text
    assert official_tokenizer.decode(ids, skip_special_tokens=True) == text


def test_space_after_special_token_and_silent_control_ids(trained_tokenizer):
    """Fixture-free: the same rules with a tokenizer trained in-process (same special-token scheme)."""
    tok = trained_tokenizer
    user, assistant = tok.get_command("<|user|>"), tok.get_command("<|assistant|>")
    ids = [user] + tok.encode("\nhi") + [assistant]
    assert tok.decode(ids) == "<|user|> \nhi<|assistant|>"
    assert tok.decode(ids, skip_special_tokens=True) == "<|user|> \nhi<|assistant|>"
    assert tok.decode([0]) == tok.decode([1]) == tok.decode([2]) == ""
    assert tok.decode([2] + tok.encode("hi")) == "hi"  # an empty piece first still drops the leading "▁"


def test_ids_outside_the_vocabulary(trained_tokenizer):
    tok = trained_tokenizer
    with pytest.raises(TokenizerError, match=f"{tok.vocab_size} is outside the vocabulary"):
        tok.decode([tok.vocab_size])
    # skip_unknown=True: they decode to nothing, as the official tokenizer decodes them.
    sop = tok.get_command("sop")
    assert tok.decode([sop, tok.vocab_size, -1] + tok.encode("hi"), skip_unknown=True) == tok.decode(
        [sop] + tok.encode("hi"))
