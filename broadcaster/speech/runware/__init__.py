"""Speech through Runware's audioInference API (Qwen3-TTS 1.7B CustomVoice)."""
