"""Detection clips: the audio of each detection event, cut from the capture ring with pre- and
post-roll, checked for human speech before it is kept, written by a thread of its own."""
