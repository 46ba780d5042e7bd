"""Vocabulary tables of the report lexicon (shared.text.lexicon): radiology English (+ a few
common Chinese terms) as regular-expression fragments.

Every table maps a pattern to the value it asserts. Patterns are matched against a
lower-cased copy of the report; `(?<![a-z])` / `(?![a-z])` stand in for word boundaries so
the Chinese terms (no spaces) work with the same machinery.
"""

from __future__ import annotations

B = r"(?<![a-z0-9])"  # left word boundary (letters/digits)
E = r"(?![a-z])"  # right word boundary
_COLON = r"(?:[\s-]+colon)?"

# Colon segments -> canonical site (DESIGN.md section 2). Longest alternatives first.
SITE_PATTERNS: list[tuple[str, str]] = [
    (B + r"recto-?\s?sigmoid(?:\s+(?:junction|colon|region))?" + E, "sigmoid"),
    (B + r"(?:ileo-?\s?c(?:a)?ecal|ic)\s+(?:valve|junction|region)" + E, "ascending"),
    (B + r"ileo-?\s?c(?:a)?ecal" + E, "ascending"),
    (B + r"c(?:a)?ecal\s+pole" + E, "ascending"),
    (B + r"c(?:a)?ec(?:um|al)" + E, "ascending"),
    (B + r"hepatic\s+flexure" + _COLON + E, "ascending"),
    (B + r"splenic\s+flexure" + _COLON + E, "descending"),
    (B + r"right(?:[\s-]+sided)?\s+(?:hemi)?colon" + E, "ascending"),
    (B + r"left(?:[\s-]+sided)?\s+(?:hemi)?colon" + E, "descending"),
    (B + r"ascending" + _COLON + E, "ascending"),
    (B + r"transverse" + _COLON + E, "transverse"),
    (B + r"descending" + _COLON + E, "descending"),
    (B + r"(?:sigmoid(?:al)?|s-colon)" + _COLON + E, "sigmoid"),
    (B + r"ano-?\s?rectal" + E, "rectum"),
    (B + r"rect(?:um|al)(?:\s+ampulla)?" + E, "rectum"),
    ("乙状结肠", "sigmoid"),
    ("直肠", "rectum"),
    ("升结肠", "ascending"),
    ("回盲部", "ascending"),
    ("盲肠", "ascending"),
    ("结肠肝曲", "ascending"),
    ("横结肠", "transverse"),
    ("结肠脾曲", "descending"),
    ("降结肠", "descending"),
]

# Words that make a tumour noun colorectal even without a named segment.
COLON_CONTEXT = (
    B + r"(?:colon|colonic|colorectal|large\s+(?:bowel|intestine)|crc|pericolic)" + E + "|结肠"
)

# Tumour nouns (colorectal if attached to a colon site or colon context).
TUMOR = (
    B + r"(?:masses|mass|tumou?rs?|tumoral|carcinomas?|cancers?|neoplasms?|neoplastic|neoplasia"
    r"|malignancy|malignant[\s-]+(?:appearing\s+)?(?:stricture|lesion|narrowing|stenosis)"
    r"|adenocarcinomas?|lesions?|growths?|apple[\s-]?core|napkin[\s-]ring|polypoid|primary"
    r"|(?:wall|mural)\s+thickening|thickening|ca)" + E + "|肿瘤|癌|占位|肿块|新生物"
)
# "it measures", "the lesion measures": refer back to the last tumour (coreference).
ANAPHOR = B + r"it\s+(?:measures|is\s+measured|spans)" + E

COUNT_WORDS = {"two": 2, "three": 3, "four": 4, "five": 5, "2": 2, "3": 3, "4": 4, "5": 5,
               "both": 2, "double": 2, "twin": 2}
COUNT = (
    B + r"(two|three|four|five|[2-5]|double|twin)\s+(?:[a-z-]+\s+){0,2}?"
    r"(?:masses|lesions|tumou?rs|carcinomas|neoplasms|growths|cancers)" + E
)

# Wall thickening explained by a benign cause is not a tumour.
BENIGN_THICKENING = (
    B + r"(?:diverticulitis|colitis|inflammatory|infectious|infective|ischemi\w*|ischaemi\w*"
    r"|underdistension|under-distension|collapsed?|non-?distension|peristalsis)" + E
)

# Colon resection: tumour mentions in the same sentence are history, not current disease.
RESECTION = (
    B + r"(?:(?:hemi|sigmoid|procto)?colectomy|sigmoidectomy|proctectomy|hartmann'?s?"
    r"|(?:low\s+)?anterior\s+resection|abdominoperineal|apr|lar|tme|resected|anastomosis)" + E
)

# Phrases that look like negation but are not (NegEx pseudo-triggers) or hedges (asserted).
PSEUDO_NEGATION = (
    B + r"(?:no\s+(?:significant\s+|substantial\s+|definite\s+|interval\s+|appreciable\s+)?"
    r"(?:change|increase|decrease|progression)|without\s+(?:significant\s+)?change"
    r"|not\s+only|cannot\s+be\s+(?:excluded|ruled\s+out)|can'?t\s+be\s+excluded"
    r"|not\s+(?:be\s+)?excluded|cannot\s+exclude)" + E
)
# Negation before the term it negates (scope runs forward to the end of the clause).
PRE_NEGATION = (
    B + r"(?:no\s+evidence\s+of|no\s+sign\s+of|negative\s+for|free\s+of|absence\s+of|without"
    r"|w/o|no|not|non|nor|neither|never|rule\s+out|ruled\s+out\s+for|r/o|evaluate\s+for"
    r"|assess\s+for|exclude)" + E + "|未见|无"
)
HYPOTHETICAL = B + r"(?:rule\s+out|r/o|evaluate\s+for|assess\s+for|exclude)" + E
# Negation after the term (scope runs back to the start of the comma segment).
POST_NEGATION = (
    B + r"(?:(?:is|are|was|were)?\s*(?:not|no\s+longer)\s+(?:seen|identified|visuali[sz]ed|present"
    r"|demonstrated|evident|appreciated|noted|detected|visible)|unremarkable|within\s+normal\s+limits"
    r"|wnl|(?:has|have)\s+resolved|resolved|ruled\s+out|excluded|absent)" + E
)
# Words that end a negation scope (clause boundaries and NegEx termination terms).
SCOPE_END = (
    B + r"(?:but|however|although|though|whereas|except|apart\s+from|aside\s+from|other\s+than"
    r"|due\s+to|secondary\s+to|caused\s+by|related\s+to|which|while|yet)" + E
)
# A comma segment with one of these is a new statement, not part of a negated list.
AFFIRM = (
    B + r"(?:is|are|was|were|seen|noted|identified|present|demonstrated|there|measur\w*"
    r"|shows?|reveals?)" + E
)

# Sizes: "3.2 x 4.1 x 2 cm", "3 and 4 cm", "4-cm", "35mm", "4.5 厘米".
NUM = r"(\d+(?:\.\d+)?)"
UNIT = r"\s*-?\s*(mm|cm|millimet(?:er|re)s?|centimet(?:er|re)s?|厘米|毫米)(?![a-z])"
SIZE_DIMS = NUM + r"\s*(?:x|\*|by)\s*" + NUM + r"(?:\s*(?:x|\*|by)\s*" + NUM + r")?" + UNIT
SIZE_PAIR = NUM + r"\s*(?:" + UNIT + r")?\s*(?:and|,|&|/)\s*" + NUM + UNIT
SIZE_ONE = NUM + UNIT
SIZE_IS_DISTANCE = r"^\s*(?:from|above|below|proximal\s+to|distal\s+to|away|beyond)\b"

# Organs and other anatomy: anchors for attributes ("enlarged", "normal") and sizes.
ORGAN_PATTERNS: list[tuple[str, str]] = [
    (B + r"(?:hepato)?splenomegaly" + E + "|脾大|脾脏增大|脾肿大", "spleen+enlarged"),
    (B + r"(?:hepatic\s+steatosis|hepatosteatosis|steatosis|steatotic|steatohepatitis|nafld|masld"
     r"|nash|fatty\s+(?:liver|infiltration|infiltrated|change|changes|metamorphosis|degeneration)"
     r"|(?:liver|hepatic\s+parenchyma)\s*(?::|is|appears)?\s*(?:diffusely\s+)?fatty)" + E
     + "|脂肪肝", "liver+fatty"),
    (B + r"(?:spleen|splenic)" + E + "|脾", "spleen"),
    (B + r"(?:liver|hepatic)" + E + "|肝", "liver"),
    (B + r"(?:urinary\s+)?bladder" + E + "|膀胱", "bladder"),
    (B + r"(?:left|l)\s+(?:kidney|renal)" + E + "|左肾", "kidney_left"),
    (B + r"(?:right|r)\s+(?:kidney|renal)" + E + "|右肾", "kidney_right"),
    (B + r"(?:both\s+kidneys|kidneys|kidney|renal)" + E, "kidneys"),
    (B + r"(?:small\s+bowel|small\s+intestine|pericolic|perirectal|mesorectal)" + E, "other"),
    (B + r"(?:colon|colonic|colorectal|large\s+bowel|large\s+intestine|bowel|crc)" + E + "|结肠", "colon"),
    (B + r"(?:lymph\s+nodes?|nodes?|lymphadenopathy|gallbladder|pancrea\w*|adrenals?|stomach"
     r"|gastric|small\s+bowel|ileum|ileal|jejun\w*|duoden\w*|appendix|ovar\w*|uter\w*|prostat\w*"
     r"|lungs?|aorta|aortic|ivc|vein|artery|spine|vertebra\w*|cysts?|hernia|slices?|sections?"
     r"|mesenteric|omentum|omental|peritoneal|ascites|fluid|stones?|calculus|calculi|metasta\w*"
     r"|segment\s+\d|ureters?|hydroureter|hydronephrosis|vessels?|loops?|appendix|verge)" + E
     + "|胆囊|胰|淋巴结", "other"),
]

# Attributes: attach to the nearest organ mention.
ATTR_PATTERNS: list[tuple[str, str]] = [
    (B + r"(?:(?:partially|under|minimally|poorly|incompletely|mildly)[\s-]?disten[dst]\w*"
     r"|underdistension|decompressed|collapsed|empty)" + E, "normal"),
    (B + r"(?:(?:over|hyper)?[\s-]?disten[dst]\w*|overdistension|full|retention)" + E + "|充盈", "distended"),
    (B + r"(?:enlarged|enlargement|large|prominent|increased\s+in\s+size|bulky)" + E + "|增大",
     "enlarged"),
    (B + r"(?:present|intact)" + E, "present"),
    (B + r"(?:diffusely\s+)?(?:hypoattenuat\w*|hypodens\w*|low[\s-]+(?:attenuation|density)"
     r"|(?:decreased|reduced|low|lower|diminished)\s+(?:in\s+)?(?:attenuation|density))" + E,
     "lowatt"),
    (B + r"(?:normal|normally|unremarkable|within\s+normal\s+limits|wnl|no\s+abnormality)" + E
     + "|未见异常|正常", "normal"),
]
FOCAL = B + r"(?:lesions?|cysts?|mass|nodules?|focus|foci|metasta\w*|hemangioma|segment)" + E

# Kidney absence and presence (explicit patterns; kidney negation is not generic negation).
_SIDE = r"(left|right|l|r|bilateral|both)"
_NEPHRECTOMY = r"(?:radical\s+|total\s+|simple\s+|laparoscopic\s+|donor\s+)?nephrectom(?:y|ies)"
KIDNEY_ABSENT: list[str] = [
    B + r"partial\s+nephrectom(?:y|ies)" + E,  # group-less: kidney present (handled first)
    B + _SIDE + r"[\s-]+(?:sided\s+)?" + _NEPHRECTOMY + E,
    B + _NEPHRECTOMY + r"\s+(?:on\s+the\s+)?" + _SIDE + r"(?:\s+side)?" + E,
    B + r"(?:absent|missing|no)\s+(?:visible\s+|identifiable\s+)?" + _SIDE
    + r"\s+kidney(?!\s+(?:stones?|calcul\w*|lesions?|mass|cysts?|abnormalit\w*|hydro\w*))" + E,
    B + _SIDE + r"\s+kidneys?\s*(?::|is|are|has\s+been|have\s+been)?\s*(?:surgically\s+|congenitally\s+)?"
    r"(?:absent|missing|removed|resected|not\s+(?:seen|visuali[sz]ed|identified|present))" + E,
    B + r"(?:surgically|congenitally)\s+absent\s+" + _SIDE + r"\s+kidney" + E,
    B + _SIDE + r"\s+renal\s+agenesis" + E,
    B + r"absence\s+of\s+the\s+" + _SIDE + r"\s+kidney" + E,
    "(左|右|双)肾(?:缺如|切除)",
]
SOLITARY_KIDNEY = B + r"(?:solitary|single|sole|only)\s+" + _SIDE + r"\s+kidney" + E
KIDNEYS_SUMMARY = B + r"kidneys\s*:\s*(both\s+present|both\s+absent|left\s+absent|right\s+absent)" + E

# Phase. Non-contrast first so "without IV contrast" is not read as "IV contrast".
_IV = r"(?:iv|i\.v\.|intravenous|intra-venous|iodinated)"
PHASE_PATTERNS: list[tuple[str, str]] = [
    (B + r"(?:without|w/o|no)\s+and\s+(?:with|w/)\s+(?:" + _IV + r"\s+)?contrast" + E, "portal_venous"),
    (B + r"(?:pre[\s-]*and\s+post[\s-]*contrast|multi[\s-]?phas\w*)" + E, "portal_venous"),
    (B + r"(?:(?:without|w/o|no|before)\s+(?:the\s+)?(?:administration\s+of\s+|use\s+of\s+)?(?:oral\s+or\s+|oral\s+and\s+)?"
     + _IV + r"?\s*contrast(?:\s+(?:medium|material|agent))?"
     r"|contrast\s+was\s+not\s+(?:given|administered|used)|non[\s-]?contrast(?:ed)?|non[\s-]?enhanced"
     r"|unenhanced|un-enhanced|nect|plain\s+(?:ct|film\s+ct|scan|abdominal\s+ct)|native\s+ct"
     r"|pre[\s-]?contrast\s+only|phase\s*:\s*non\s+contrast)" + E + "|平扫", "non_contrast"),
    (B + r"(?:portal[\s-]*venous|porto[\s-]?venous|venous\s+phase|pv\s+phase|cect|contrast[\s-]+enhanced"
     r"|post[\s-]?contrast|(?:with|w/|after|following)\s+(?:the\s+)?(?:administration\s+of\s+)?(?:oral\s+and\s+)?"
     + _IV + r"?\s*contrast|" + _IV + r"\s+contrast|enhanced\s+ct|omnipaque|isovue|iohexol|iopamidol"
     r"|visipaque|ultravist|phase\s*:\s*portal\s+venous)" + E + "|门静脉期|门脉期|增强", "portal_venous"),
    (B + r"phase\s*:\s*unknown" + E, "unknown"),
]

HEADINGS = (
    r"^\s*(?:findings?|impressions?|conclusions?|technique|comparison|clinical\s+(?:history|information)"
    r"|history|indications?|exam(?:ination)?|procedure|report|ct\s+abdomen(?:\s+and\s+pelvis)?)\s*:\s*"
)
ABBREVIATIONS = r"(?<![a-z])(?:approx|appr|ca|e\.g|i\.e|vs|cf|max|min|resp|dr|fig|i\.v|sq|pt)\.(?=\s)"
