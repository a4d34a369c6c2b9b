"""Easel's workers on a Ray Serve cluster (`launch.py --cluster ...`).

Everything under this package imports Ray, so only launch.py's `--cluster` path imports it; the
Engine sees the cluster through app.workers' plain protocol.

- wire.py: what travels between the front end and a worker (a turn, its events);
- worker.py: the Serve deployment: one replica per GPU (or per share of CPU cores), each an Engine
  of its own over its machine's models folder, saving nothing;
- routing.py: which replica takes a request (the one holding its checkpoint, else the least recently
  used that has the file);
- board.py: the small actor through which the front end signals interrupt/skip/watch and the workers
  report what they hold and do;
- front.py: the front end's side: a queue turn sent to a worker, its progress and pictures streamed
  back, pictures saved here once, a lost worker's turn run again;
- connect.py: starting or joining the cluster from the --cluster flag.
"""
