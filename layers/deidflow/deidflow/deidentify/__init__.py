"""Apply a RuleSet to one data set: the PS3.15 profile underneath, the rules' transformations on top.

One pass over every element at every depth. An element's action comes from, in order: the rules'
transformations (last matching entry wins), the private-element policy, Table E.1-1 under the
selected options, and for elements the table does not list, deidflow's own defaults (every UID is
remapped unless it is a well-known class/syntax/coding UID; every date shifts with the patient's
dates; unknown public tags are removed).

Rooms: `decide` (which action and why; pure), `apply` (the walk, one handler per action),
`finish` (private blocks, added elements, markers, file meta), `result` (what comes back).
"""

from .apply import Deidentifier, patient_identity
from .decide import Action
from .finish import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from .result import Decision, DeidResult, SourceIdentifiers

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "Action",
    "Decision",
    "DeidResult",
    "Deidentifier",
    "SourceIdentifiers",
    "patient_identity",
]
