import json
for l in open("exp/results.jsonl"):
    r = json.loads(l)
    print(f"{r['name']:16s} {r['split']} e{r['epochs']} {r['mask_ap']:.3f} {r['mask_ap50']:.3f} {r['mask_ap75']:.3f} | box {r['box_ap']:.3f} {r['box_ap75']:.3f} | cand {r['cand_iou']:.3f} n{r['n_cand']} | cpu {r['train_cpu_s']:.0f} ev {r.get('eval_cpu_s',0):.0f} | cls {r['last_losses']['loss_classifier']:.3f} box {r['last_losses']['loss_box_reg']:.3f} mask {r['last_losses']['loss_mask']:.3f}")
