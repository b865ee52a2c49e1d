"""Training-data tooling: the Debian game-music corpus (`debian`) and the GPU subset (`pack`)."""
