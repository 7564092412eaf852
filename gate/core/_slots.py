"""The hash tag of each slot group: the Redis Cluster slot of ``SLOT_TAGS[g]`` is 16 * g.

Redis Cluster places a key by the CRC16 (XMODEM) of its hash tag, modulo 16384 slots. A
number's keys carry the tag of its slot group (gate/core/keys.py), and these tags are
chosen so that the 1024 groups fall on every 16th slot: any split of the slots between
shards (``redis-cli --cluster create`` gives each of n masters one range) gives each
shard the same number of groups, give or take one.

Generated once, never to change (it is the data layout): for n = 0, 1, 2…, the base-36
text of n is the tag of group ``slot // 16`` if its slot is a multiple of 16 and that
group has no tag yet (tests/unit/test_keys.py regenerates and checks it).
"""

from __future__ import annotations

__all__ = ["SLOT_GROUPS", "SLOT_TAGS"]

SLOT_GROUPS = 1024
# fmt: off
SLOT_TAGS: tuple[str, ...] = (
    "1bz", "8yr", "e8a", "9m1", "5n3", "avs", "4zp", "yi8", "53t", "4el", "aio", "h6o",
    "d5m", "ecu", "8fn", "19n", "nbd", "274", "21g", "nd7", "7me", "k85", "csv", "7k6",
    "j3j", "clj", "cj9", "76q", "3xc", "8j", "z1", "f0h", "8yc", "1bk", "1d8", "e8p",
    "a2j", "hmj", "5hq", "4za", "if5", "53e", "556", "pkn", "ecd", "964", "90g", "ee7",
    "o4m", "fkm", "3gn", "co", "cu4", "7mt", "baw", "6y7", "kec", "703", "7rh", "kc0",
    "2jb", "3xr", "f0y", "2l1", "dlj", "m3j", "m59", "9iq", "5js", "4xc", "a0h", "hoh",
    "574", "ibd", "id7", "51g", "92e", "eg5", "eaf", "946", "3el", "am", "o6o", "fio",
    "bcu", "c5m", "69n", "7ov", "74b", "6bz", "cny", "721", "fvs", "2n3", "gb0", "3zp",
    "mws", "9o3", "lc0", "3", "4xr", "5jb", "5l1", "a0y", "akm", "h4m", "51v", "4gn",
    "8dl", "92t", "1y7", "eaw", "23e", "nf5", "wkn", "256", "cqt", "7i4", "7og", "ru7",
    "6bk", "74s", "b8p", "6d8", "x3", "f2j", "3za", "2hq", "5nw", "48o", "4z4", "hkl",
    "dhn", "8y6", "mu5", "1dm", "96a", "ec1", "eeb", "902", "530", "aox", "13a0", "55c",
    "bgq", "c1i", "6yb", "7kr", "3ah", "ei", "o2k", "fmk", "frw", "2j7", "zu", "n94",
    "70f", "ke6", "kce", "765", "pt6", "5nf", "5h5", "apu", "ezo", "9k7", "9md", "e84",
    "mj8", "96p", "d3k", "ees", "4e9", "h0i", "55r", "4cj", "c1x", "7m0", "7kc", "6ys",
    "ex", "3ay", "fmz", "212", "oin", "3x6", "ft5", "zd", "6fo", "70w", "j5l", "cjl",
    "5j7", "arw", "i94", "5ld", "9of", "1j1e", "f", "9i5", "d1i", "8d9", "8bj", "1yb",
    "57p", "4ah", "amk", "h2k", "7ia", "kx9", "c3z", "7o2", "fox", "230", "gz", "14a0",
    "38o", "xf", "gbt", "3z4", "j7n", "chn", "6dm", "72u", "4x6", "hin", "5lu", "at5",
    "89o", "1fo", "djl", "w", "mnx", "920", "1ys", "ea3", "4ay", "57a", "512", "amz",
    "c58", "7ip", "bes", "c3k", "a8", "3e9", "3cj", "gk", "xw", "wt6", "fpu", "2h5",
    "kag", "747", "72d", "kg4", "17p", "8hp", "emk", "l2k", "h8q", "agq", "4kr", "5yb",
    "he6", "40f", "465", "hce", "1j7", "857", "83d", "1ld", "n7n", "ghn", "6t", "32u",
    "78o", "6nw", "cbt", "7z4", "box", "630", "65c", "10a0", "3ia", "ox9", "k3", "3o2",
    "8ha", "17a", "112", "8n2", "4m0", "q3h", "5ys", "4kc", "40w", "5fo", "hct", "i5l",
    "e6n", "lin", "1lu", "83u", "oag", "347", "32d", "6e", "6nf", "st6", "bpu", "6h5",
    "c9q", "7e9", "7cj", "65r", "mq", "3ip", "fes", "g3k", "130", "8l0", "8jc", "15c",
    "hx9", "4ia", "4o2", "q1j", "hav", "i7n", "42u", "5dm", "1nw", "81w", "e4l", "dbt",
    "30f", "4g", "24", "365", "brw", "6j7", "6ld", "j94", "7ah", "67p", "k2k", "bmk",
    "fgq", "g1i", "os", "3kr", "eoi", "d9q", "15r", "8jr", "4ip", "yz8", "qus", "aes",
    "447", "hag", "hg4", "42d", "81f", "1nf", "1h5", "875", "4v", "30w", "n5l", "gjl",
    "kin", "7x6", "bt5", "6lu", "67a", "7ay", "bmz", "612", "i1", "3m0", "3kc", "ob",
    "h85", "4me", "4k6", "hzn", "174", "8h4", "8ng", "11g", "1js", "85s", "e0h", "9e8",
    "her", "i3j", "46q", "ya1", "bvs", "6n3", "cb0", "7zp", "34b", "tk", "60", "321",
    "fcu", "g5m", "kw", "3ov", "7el", "63t", "k6o", "bio", "4mt", "1g3w", "5y7", "aaw",
    "ekm", "9z5", "11v", "8nv", "85b", "1jb", "1l1", "831", "403", "hec", "hc0", "4rh",
    "cdr", "b2j", "7za", "6hq", "tz", "34s", "f8p", "2d8", "m5", "3i4", "3og", "kf",
    "63e", "jf5", "skn", "656", "qsu", "acu", "4ov", "59n", "13t", "8lt", "eio", "9x7",
    "1n3", "813", "8sh", "9ax", "5bz", "44b", "421", "hga", "7xc", "6js", "cfp", "b0h",
    "n3j", "glj", "2p", "36q", "3me", "id", "o7", "3k6", "jbd", "674", "61g", "jd7",
    "4i4", "hxl", "qu7", "4og", "8le", "13e", "156", "8j6", "e2j", "ddr", "1hq", "87q",
    "44s", "5bk", "5d8", "a8p", "6jb", "7xr", "b0y", "6l1", "42", "303", "3rh", "2a",
    "iu", "3mt", "faw", "2y7", "k4m", "bkm", "7gn", "61v", "fjl", "o5l", "bn", "3fo",
    "7lu", "ct5", "6x6", "jin", "712", "cmz", "6ay", "77a", "3ys", "9z", "2m0", "f1x",
    "1cj", "8xb", "e9q", "1e9", "hlk", "a3k", "a58", "5ip", "52d", "ig4", "iag", "547",
    "975", "ebe", "ed6", "91f", "265", "nce", "ne6", "20f", "k94", "7ld", "7j7", "crw",
    "cmk", "j2k", "77p", "6ah", "9k", "3yb", "f1i", "ggq", "8xs", "9jc", "9l0", "m0x",
    "a3z", "5o2", "5ia", "ix9", "4dm", "52u", "h7n", "ahn", "ebt", "1z4", "18o", "8go",
    "ng4", "22d", "247", "nag", "7h5", "cpu", "rt6", "7nf", "75r", "6cj", "6e9", "b9q",
    "f3k", "y2", "2ip", "f58", "9n2", "m2z", "8zq", "1ay", "5kc", "4ys", "a1x", "5m0",
    "h5l", "ajl", "4fo", "50w", "93u", "8em", "min", "1x6", "22u", "3dm", "fhn", "o7n",
    "6z4", "bbt", "7nw", "68o", "11a0", "75c", "730", "cox", "2o2", "f3z", "nx9", "2ia",
    "m2k", "dmk", "1ah", "m48", "4yb", "5kr", "hni", "a1i", "ice", "565", "50f", "ie6",
    "ef4", "93d", "957", "tbw", "7l1", "c0y", "6xr", "7jb", "nc0", "dy", "203", "nec",
    "3y7", "gaw", "2mt", "fu4", "71v", "6gn", "ckm", "j4m", "5og", "pu7", "aqt", "5i4",
    "9j6", "mrv", "e95", "9le", "1za", "8ai", "edr", "d2j", "h1h", "4d8", "4bk", "54s",
    "c0h", "bfp", "7js", "6xc", "dh", "fj9", "flj", "o3j", "2k6", "fsv", "n85", "2me",
    "kd7", "71g", "774", "kbd", "49n", "5ov", "hjm", "a5m", "8x7", "dio", "1el", "mt4",
    "8ax", "1zp", "913", "edc", "any", "521", "54b", "4bz", "7hq", "6za", "c2j", "bdr",
    "3d8", "g8p", "fj", "3bk", "wu7", "yv", "2i4", "fqt", "756", "rkn", "kf5", "73e",
    "hho", "4y7", "au4", "5mt", "1gn", "88n", "8z5", "dkm", "931", "efa", "8cz", "1xr",
    "5rh", "ic0", "iec", "503", "6zp", "bb0", "7n3", "cvs", "221", "fny", "3bz", "24b",
    "yg", "39n", "f5m", "gcu", "cio", "j6o", "73t", "6el", "asv", "5k6", "5me", "i85",
    "1j0d", "9ng", "9h4", "eyl", "8e8", "d0h", "1xc", "8ck", "aj9", "56q", "h3j", "alj",
    "356", "17", "7d", "33e", "su7", "6og", "6i4", "bqt", "7d8", "c8p", "64s", "7bk",
    "3hq", "lp", "g2j", "fdr", "1rh", "mc0", "8o3", "103", "h9a", "4l1", "4jb", "5xr",
    "5gn", "41v", "i4m", "hbu", "daw", "e7o", "82t", "1mt", "gio", "n6o", "33t", "7u",
    "6ov", "79n", "b5m", "ccu", "621", "bny", "7bz", "64b", "la", "fb0", "3n3", "j2",
    "8iq", "16q", "l3j", "elj", "afp", "h9p", "5xc", "4js", "41g", "hd7", "hbd", "474",
    "846", "1k6", "1me", "82e", "31v", "5w", "gkm", "n4m", "7y7", "caw", "6mt", "bu4",
    "jc0", "6rh", "603", "jec", "3l1", "h0", "nc", "3jb", "d8p", "enh", "8ks", "14s",
    "5za", "4hq", "adr", "q0z", "qkn", "456", "43e", "hf5", "1og", "80g", "864", "1i4",
    "5f", "31g", "374", "35", "6k6", "bsv", "j85", "6me", "66q", "bj9", "blj", "k3j",
    "g0h", "ffp", "3js", "nr", "8m1", "121", "14b", "8kb", "ab0", "5zp", "q0k", "4n3",
    "i6o", "ybg", "5el", "43t", "80v", "1ov", "dcu", "e5m", "b3k", "ces", "6ip", "b58",
    "35r", "1s", "2e9", "f9q", "3h5", "l4", "jg", "3nf", "jg4", "62d", "647", "jag",
    "1g2v", "4lu", "iin", "5x6", "l5l", "ejl", "8ow", "10w", "1kc", "84c", "820", "1m0",
    "hdb", "412", "47a", "5ay", "6o2", "b3z", "jx9", "6ia", "1b", "35c", "330", "71",
    "2z4", "fbt", "3nw", "jv", "62u", "7dm", "bhn", "k7n", "4ld", "h94", "q4o", "4j7",
    "8i5", "165", "10f", "8of", "84r", "1kr", "9d9", "e1i", "i2k", "hds", "5ah", "47p",
    "7ys", "6kc", "6m0", "b1x", "312", "53", "wh", "37a", "3lu", "ht", "2x6", "nin",
    "bjl", "k5l", "60w", "7fo", "hym", "4h5", "4nf", "qt6", "12d", "8md", "8k7", "147",
    "des", "e3k", "86p", "1ip", "5cj", "45r", "a9q", "5e9", "6kr", "7yb", "b1i", "cgq",
    "gmk", "n2k", "37p", "3q", "he", "3ld", "3j7", "n6", "665", "jce", "je6", "60f",
    "abt", "5z4", "58o", "4nw", "8mu", "12u", "9y6", "ehn", "802", "1o2", "1ia", "86a",
    "45c", "12a0", "qmh", "430",
)
# fmt: on
