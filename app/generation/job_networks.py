"""What a job's prompts ask of the LoRA and embedding files: the LoRAs to add for its turns, the
embeddings its prompts may name, the notes for the user, and the infotext keys A1111 writes
(`Lora hashes`, `TI hashes`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.generation.extra_networks import prompt_networks
from app.generation.lora_patch import ActiveLora
from app.generation.prompts import CHUNK_LENGTH
from app.generation.textual_inversion import EmbeddingLookup, PromptEmbedding
from app.models.network_library import NetworkLibrary
from app.models.safe_weights import UnreadableWeights


@dataclass
class JobNetworks:
    loras: list[ActiveLora] = field(default_factory=list)
    lookup: EmbeddingLookup | None = None
    notes: list[str] = field(default_factory=list)
    lora_hashes: list[str] = field(default_factory=list)  # "name: hash", as A1111 lists them


def job_networks(library: NetworkLibrary, prompt: str, negative_prompt: str, tokenizer,
                 text_width: int | None) -> JobNetworks:
    """The networks for one job on a model whose text encoder is `text_width` wide."""
    tags = prompt_networks(prompt, negative_prompt)
    networks = JobNetworks(notes=list(tags.notes))
    if tags.loras and any(library.find_lora(call.name) is None for call in tags.loras):
        library.refresh_loras()  # a file added since the last look, as A1111 looks again
    for call in tags.loras:
        entry = library.find_lora(call.name)
        if entry is None:
            networks.notes.append(f"Couldn't find Lora with name {call.name}: put it into "
                                  f"{library.lora_dirs[0]} (the picture was made without it).")
            continue
        if entry.problem:
            networks.notes.append(f"{entry.problem} The picture was made without it.")
            continue
        try:
            parsed = library.lora_file(entry)
        except (UnreadableWeights, OSError) as error:
            reason = error.reason if isinstance(error, UnreadableWeights) else str(error)
            networks.notes.append(f"Easel cannot use the LoRA '{entry.path.name}': {reason} "
                                  "The picture was made without it.")
            continue
        networks.loras.append(ActiveLora(call.name, parsed, call.te_multiplier, call.unet_multiplier))
        networks.lora_hashes.append(f"{_infotext_name(call.name)}: {library.lora_hash(entry)}")
    library.refresh_embeddings()
    usable = [PromptEmbedding(e.name, e.data.vectors) for e in library.embeddings_for(text_width).loaded
              if e.data.count <= CHUNK_LENGTH]
    networks.lookup = EmbeddingLookup(tokenizer, usable) if usable else None
    return networks


def infotext_keys(library: NetworkLibrary, networks: JobNetworks, hires_networks: JobNetworks,
                  embeddings_used: list[str]) -> dict[str, str]:
    """A1111's `Lora hashes` and `TI hashes` for the pictures of a job, the hires prompts' included
    (keys only when there is something)."""
    keys: dict[str, str] = {}
    lora_hashes = list(dict.fromkeys(networks.lora_hashes + hires_networks.lora_hashes))
    if lora_hashes:
        keys["Lora hashes"] = ", ".join(lora_hashes)
    by_name = {entry.name: entry for entry in library.embeddings}
    ti = [f"{_infotext_name(name)}: {library.embedding_hash(by_name[name])}"
          for name in dict.fromkeys(embeddings_used) if name in by_name]
    if ti:
        keys["TI hashes"] = ", ".join(ti)
    return keys


def _infotext_name(name: str) -> str:
    return name.replace(":", "").replace(",", "")  # A1111 drops what would break its list apart
