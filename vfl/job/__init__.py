"""Running a job: its config, each role's job, prediction, and the local runners.

``config`` (the job file), ``roles`` (one party's whole job: PSI, preprocessing,
training, scoring, reports), ``predict`` (scoring new rows with saved model
parts), ``threads`` (every party of a job as threads of this process).
"""
