"""Statistics as pure functions over arrays: numpy and scipy only, the seed passed in."""
