"""An example user training loop: ``fn(config, ctx)``, written against raytune_opt's TrialContext.

``config`` is the trial's resolved spec (the searched values filled in); ``ctx`` gives the
data set and the model the spec names, the trial's strategy (DDP or DeepSpeed: wrapping,
backward, optimizer step, precision) and ``ctx.report``, which reports the epoch to Tune
and keeps the best/last checkpoints, so schedulers, resume and promotion work as with the
built-in loop. This one trains with plain AdamW and a linear warm-up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def train(config: dict, ctx) -> None:
    opt = config["train"]["optimizer"]
    model = ctx.build_model()  # model.name with model.args; num_classes from the data
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt["lr"], weight_decay=opt["weight_decay"])
    model = ctx.prepare_model(model, optimizer)  # restored from the checkpoint when the trial resumes
    train_loader, val_loader = ctx.loader("train"), ctx.loader("val")  # sharded across ranks
    warmup = len(train_loader)  # steps of linear warm-up: the first epoch
    for epoch in range(ctx.start_epoch, ctx.epochs + 1):
        ctx.begin_epoch(epoch, train_loader)  # a resumed trial shuffles as a straight one would
        model.train()
        loss_sum, seen = 0.0, 0
        for i, (tokens, topic) in enumerate(train_loader):
            step = (epoch - 1) * len(train_loader) + i
            for group in optimizer.param_groups:
                group["lr"] = opt["lr"] * min(1.0, (step + 1) / warmup)
            tokens, topic = tokens.to(ctx.device), topic.to(ctx.device)
            with ctx.autocast():
                loss = F.cross_entropy(model(tokens), topic)
            ctx.backward(loss)
            ctx.step()
            loss_sum += loss.item() * len(topic)
            seen += len(topic)
        model.eval()
        correct = val_loss = count = 0.0
        with torch.no_grad():
            for tokens, topic in val_loader:
                tokens, topic = tokens.to(ctx.device), topic.to(ctx.device)
                logits = model(tokens).float()
                correct += (logits.argmax(1) == topic).sum().item()
                val_loss += F.cross_entropy(logits, topic, reduction="sum").item()
                count += len(topic)
        # Every rank reports the same numbers: sums over the ranks' shards.
        loss_sum, seen, correct, val_loss, count = ctx.all_sum(loss_sum, seen, correct, val_loss, count)
        ctx.report({"train_loss": loss_sum / seen, "val_loss": val_loss / count, "val_accuracy": correct / count,
                    "lr": optimizer.param_groups[0]["lr"]}, epoch=epoch)
