"""Generated media and a misbehaving image server, for the demo, the tests and the benchmarks.

- `testing.videos`: synthetic videos whose every frame shows its own number (read back by
  `read_frame_number`), rotated, variable frame rate, with audio; an audio-only file.
- `testing.images`: one generator per kind of still picture (`make_image`, `make_scene`,
  `make_bomb_png`).
- `testing.files`: damaged files of any kind (noise, a truncated copy).
- `testing.server`: `ImageServer`, a local HTTP server of generated images and every
  download pathology (``python -m datamill.testing.server``).

Nothing in the jobs, media, io or engine layers imports this package.
"""
