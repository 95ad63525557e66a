"""Audio sources: where blocks of samples come from (files now; microphones, stdin, RTSP next)."""
