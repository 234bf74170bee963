"""`edge-agent bench`: how fast the pipeline is, against what the machine allows and against Ultralytics.

One invocation measures, on the same H.264 clips served as live RTSP cameras, with the same model
file, input shape and thresholds:

    bound.py            each stage's CPU cost per frame alone, cheapest configuration -> frames/s bound
    pipeline.py         the real `Daemon`, in-process, N cameras, a private Mosquitto: one step
    ultralytics_run.py  Ultralytics' own multi-stream predict on the same cameras, in a subprocess
    search.py           the stop rules: saturation (fps stops rising) and the paced limit
    paced.py            cameras sustained at 15 fps and the latency budget
    report.py           the table and the final JSON line
    suite.py            runs it all in order and keeps the bench under ~10 minutes
    cameras.py, cpu.py  the RTSP camera farm; CPU use read from /proc
"""
