"""Per-camera analytics on tracked detections: zones, counting lines and alarm rules.

`config` (the camera's `analytics:` section), `geometry` (zone membership, line crossings),
`tracking` (track ids across frames), `rules` (counts and the alarm state machines), `events`
(what an alarm publishes). Nothing is imported here: the config schema imports `config`, and
loading it must not pull in supervision and OpenCV.
"""
