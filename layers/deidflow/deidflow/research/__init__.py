"""The research side: who may see which de-identified instances, and DICOMweb over the index.

Rooms: `profiles` (the permission profiles file), `header` (an index item as a decision record),
`visibility` (the one rule that decides what a caller sees, on every endpoint), `qido` (search),
`wado` (metadata, frames, bulk data), `service` (the API's operations over an index and a store),
`audit` (records and their hash chain). No AWS calls here: `deidflow.cloud.research_api` is the edge.
"""
