"""Running a job: its config, the task table, each role's job, prediction, and the thread runner.

``config`` (the job file), ``jobfile`` (writing it back), ``tasks`` (which roles take
part in each task and what each runs: every runner reads it), ``roles`` (one party's
whole job: PSI, preprocessing, training, scoring, reports), ``predict`` (scoring new
rows with saved model parts), ``threads`` (every party of a job as threads of this
process; processes over TLS are ``parties.launcher``).
"""
