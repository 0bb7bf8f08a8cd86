#!/usr/bin/env bash
# The paper's experiments (EquS, WACV 2026, Table 1) and the official evaluation.sh, runnable as is:
#   bash evaluation.sh            (runs everything in order; resumable: rerun to continue)
#   python -m runners.summary     (then: the measured table beside the published numbers)
# Datasets: exp/datasets/celeba_hq/ (CelebA-HQ test faces) and exp/datasets/imagenet/imagenet/ with
# exp/imagenet_val_1k.txt (optional LSUN runs: exp/datasets/lsun_<bedroom|cat|church>/, see below);
# checkpoints under exp/logs/ (see docs/cli.md); the inpainting mask at
# exp/inp_masks/mask.npy, where the reference reads it (without it inpainting uses the built-in mask and
# runners.summary keeps those runs out of Table 1's cells). Append flags to a line as
# needed (--batch_size 8, --device cuda:1, --subset_end 100, ...); --EquS / --EquSplus switch EquS on.
set -u
# every line runs even when one fails (a missing dataset, an interrupted run); the failures are
# counted, and the script's exit status says whether any run failed
failed=0
trap 'failed=$((failed + 1))' ERR

## Official EquS command lines, unchanged (DDNM; add "--EquS" or "--EquSplus" for EquS / EquS+) ##

# CelebA-HQ, noise-free
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --deg "sr_bicubic" --deg_scale 4 --sigma_y 0. -i celeba_sr_bc_4
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --deg "sr_averagepooling" --deg_scale 4 --sigma_y 0. -i celeba_sr_ap_4
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --deg "deblur_gauss" --sigma_y 0. -i celeba_deblur_g
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --deg "deblur_aniso" --sigma_y 0. -i celeba_deblur_aniso
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --deg "colorization" --sigma_y 0. -i celeba_colorization
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --deg "cs_walshhadamard" --deg_scale 0.25 --sigma_y 0. -i celeba_cs_wh_025
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --deg "cs_blockbased" --deg_scale 0.25 --sigma_y 0. -i celeba_cs_bb_025
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --deg "inpainting" --sigma_y 0. -i celeba_inpainting

# CelebA-HQ, noisy (sigma_y in [0, 1] units; --add_noise puts the noise on y)
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --deg "sr_averagepooling" --deg_scale 4 --sigma_y 0.2 -i celeba_sr_ap_4_n_02 --add_noise
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --deg "cs_walshhadamard" --deg_scale 0.25 --sigma_y 0.2 -i celeba_cs_wh_025_n_02 --add_noise

# ImageNet, noise-free
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --deg "sr_bicubic" --deg_scale 4 --sigma_y 0. -i imagenet_sr_bc_4
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --deg "sr_averagepooling" --deg_scale 4 --sigma_y 0. -i imagenet_sr_ap_4
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --deg "deblur_gauss" --sigma_y 0. -i imagenet_deblur_g
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --deg "deblur_aniso" --sigma_y 0. -i imagenet_deblur_aniso
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --deg "colorization" --sigma_y 0. -i imagenet_colorization
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --deg "cs_walshhadamard" --deg_scale 0.25 --sigma_y 0. -i imagenet_cs_wh_025
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --deg "cs_blockbased" --deg_scale 0.25 --sigma_y 0. -i imagenet_cs_bb_025
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --deg "inpainting" --sigma_y 0. -i imagenet_inpainting

## Table 1: DDNM vs DDNM-EquS+ and DDRM vs DDRM-EquS+ (DDNM itself: the official lines above) ##

# CelebA-HQ, DDNM-EquS+
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --deg "deblur_gauss" --sigma_y 0. -i celeba_deblur_g_equsplus --EquSplus
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --deg "cs_blockbased" --deg_scale 0.25 --sigma_y 0. -i celeba_cs_bb_025_equsplus --EquSplus
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --deg "inpainting" --sigma_y 0. -i celeba_inpainting_equsplus --EquSplus
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --deg "sr_bicubic" --deg_scale 4 --sigma_y 0. -i celeba_sr_bc_4_equsplus --EquSplus
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --deg "colorization" --sigma_y 0. -i celeba_colorization_equsplus --EquSplus

# CelebA-HQ, DDRM
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --sampler ddrm --deg "deblur_gauss" --sigma_y 0. -i celeba_deblur_g_ddrm
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --sampler ddrm --deg "cs_blockbased" --deg_scale 0.25 --sigma_y 0. -i celeba_cs_bb_025_ddrm
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --sampler ddrm --deg "inpainting" --sigma_y 0. -i celeba_inpainting_ddrm
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --sampler ddrm --deg "sr_bicubic" --deg_scale 4 --sigma_y 0. -i celeba_sr_bc_4_ddrm
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --sampler ddrm --deg "colorization" --sigma_y 0. -i celeba_colorization_ddrm

# CelebA-HQ, DDRM-EquS+
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --sampler ddrm --deg "deblur_gauss" --sigma_y 0. -i celeba_deblur_g_ddrm_equsplus --EquSplus
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --sampler ddrm --deg "cs_blockbased" --deg_scale 0.25 --sigma_y 0. -i celeba_cs_bb_025_ddrm_equsplus --EquSplus
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --sampler ddrm --deg "inpainting" --sigma_y 0. -i celeba_inpainting_ddrm_equsplus --EquSplus
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --sampler ddrm --deg "sr_bicubic" --deg_scale 4 --sigma_y 0. -i celeba_sr_bc_4_ddrm_equsplus --EquSplus
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --sampler ddrm --deg "colorization" --sigma_y 0. -i celeba_colorization_ddrm_equsplus --EquSplus

# ImageNet, DDNM-EquS+
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --deg "deblur_gauss" --sigma_y 0. -i imagenet_deblur_g_equsplus --EquSplus
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --deg "cs_blockbased" --deg_scale 0.25 --sigma_y 0. -i imagenet_cs_bb_025_equsplus --EquSplus
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --deg "inpainting" --sigma_y 0. -i imagenet_inpainting_equsplus --EquSplus
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --deg "sr_bicubic" --deg_scale 4 --sigma_y 0. -i imagenet_sr_bc_4_equsplus --EquSplus
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --deg "colorization" --sigma_y 0. -i imagenet_colorization_equsplus --EquSplus

# ImageNet, DDRM
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --sampler ddrm --deg "deblur_gauss" --sigma_y 0. -i imagenet_deblur_g_ddrm
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --sampler ddrm --deg "cs_blockbased" --deg_scale 0.25 --sigma_y 0. -i imagenet_cs_bb_025_ddrm
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --sampler ddrm --deg "inpainting" --sigma_y 0. -i imagenet_inpainting_ddrm
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --sampler ddrm --deg "sr_bicubic" --deg_scale 4 --sigma_y 0. -i imagenet_sr_bc_4_ddrm
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --sampler ddrm --deg "colorization" --sigma_y 0. -i imagenet_colorization_ddrm

# ImageNet, DDRM-EquS+
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --sampler ddrm --deg "deblur_gauss" --sigma_y 0. -i imagenet_deblur_g_ddrm_equsplus --EquSplus
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --sampler ddrm --deg "cs_blockbased" --deg_scale 0.25 --sigma_y 0. -i imagenet_cs_bb_025_ddrm_equsplus --EquSplus
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --sampler ddrm --deg "inpainting" --sigma_y 0. -i imagenet_inpainting_ddrm_equsplus --EquSplus
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --sampler ddrm --deg "sr_bicubic" --deg_scale 4 --sigma_y 0. -i imagenet_sr_bc_4_ddrm_equsplus --EquSplus
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --sampler ddrm --deg "colorization" --sigma_y 0. -i imagenet_colorization_ddrm_equsplus --EquSplus

## Noisy tasks: DDNM+ vs DDNM+-EquS, DDRM vs DDRM-EquS (CelebA-HQ DDNM+: the official lines above) ##
# Note: the official code ran its noise-free EquS sampler here; this project runs DDNM+ with EquS.

# CelebA-HQ, noisy
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --deg "sr_averagepooling" --deg_scale 4 --sigma_y 0.2 -i celeba_sr_ap_4_n_02_equs --add_noise --EquS
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --sampler ddrm --deg "sr_averagepooling" --deg_scale 4 --sigma_y 0.2 -i celeba_sr_ap_4_n_02_ddrm --add_noise
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --sampler ddrm --deg "sr_averagepooling" --deg_scale 4 --sigma_y 0.2 -i celeba_sr_ap_4_n_02_ddrm_equs --add_noise --EquS
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --deg "cs_walshhadamard" --deg_scale 0.25 --sigma_y 0.2 -i celeba_cs_wh_025_n_02_equs --add_noise --EquS
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --sampler ddrm --deg "cs_walshhadamard" --deg_scale 0.25 --sigma_y 0.2 -i celeba_cs_wh_025_n_02_ddrm --add_noise
python main.py --ni --config celeba_hq.yml --path_y celeba_hq --eta 0.85 --sampler ddrm --deg "cs_walshhadamard" --deg_scale 0.25 --sigma_y 0.2 -i celeba_cs_wh_025_n_02_ddrm_equs --add_noise --EquS

# ImageNet, noisy
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --deg "sr_averagepooling" --deg_scale 4 --sigma_y 0.2 -i imagenet_sr_ap_4_n_02 --add_noise
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --deg "sr_averagepooling" --deg_scale 4 --sigma_y 0.2 -i imagenet_sr_ap_4_n_02_equs --add_noise --EquS
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --sampler ddrm --deg "sr_averagepooling" --deg_scale 4 --sigma_y 0.2 -i imagenet_sr_ap_4_n_02_ddrm --add_noise
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --sampler ddrm --deg "sr_averagepooling" --deg_scale 4 --sigma_y 0.2 -i imagenet_sr_ap_4_n_02_ddrm_equs --add_noise --EquS
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --deg "cs_walshhadamard" --deg_scale 0.25 --sigma_y 0.2 -i imagenet_cs_wh_025_n_02 --add_noise
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --deg "cs_walshhadamard" --deg_scale 0.25 --sigma_y 0.2 -i imagenet_cs_wh_025_n_02_equs --add_noise --EquS
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --sampler ddrm --deg "cs_walshhadamard" --deg_scale 0.25 --sigma_y 0.2 -i imagenet_cs_wh_025_n_02_ddrm --add_noise
python main.py --ni --config imagenet_256.yml --path_y imagenet --eta 0.85 --sampler ddrm --deg "cs_walshhadamard" --deg_scale 0.25 --sigma_y 0.2 -i imagenet_cs_wh_025_n_02_ddrm_equs --add_noise --EquS

## LSUN: DDPM's bedroom / cat / church models, DDNM vs DDNM-EquS+ (no published numbers) ##
# Runs only for the image folders present: exp/datasets/lsun_bedroom/, lsun_cat/, lsun_church/ (any
# images; resized to 256x256). The checkpoints (about 455 MB each) download to
# exp/logs/diffusion_models_converted/ and are checked against the MD5 sums DDIM publishes.
for lsun in bedroom cat church; do
    if [ ! -d "exp/datasets/lsun_$lsun" ]; then
        echo "evaluation.sh: exp/datasets/lsun_$lsun not found; its LSUN runs are skipped" >&2
        continue
    fi
    for equs in "" "--EquSplus"; do
        tag="${equs:+_equsplus}"
        python main.py --ni --config "$lsun.yml" --path_y "lsun_$lsun" --eta 0.85 --deg "deblur_gauss" --sigma_y 0. -i "lsun_${lsun}_deblur_g$tag" $equs
        python main.py --ni --config "$lsun.yml" --path_y "lsun_$lsun" --eta 0.85 --deg "cs_blockbased" --deg_scale 0.25 --sigma_y 0. -i "lsun_${lsun}_cs_bb_025$tag" $equs
        python main.py --ni --config "$lsun.yml" --path_y "lsun_$lsun" --eta 0.85 --deg "inpainting" --sigma_y 0. -i "lsun_${lsun}_inpainting$tag" $equs
        python main.py --ni --config "$lsun.yml" --path_y "lsun_$lsun" --eta 0.85 --deg "sr_bicubic" --deg_scale 4 --sigma_y 0. -i "lsun_${lsun}_sr_bc_4$tag" $equs
        python main.py --ni --config "$lsun.yml" --path_y "lsun_$lsun" --eta 0.85 --deg "colorization" --sigma_y 0. -i "lsun_${lsun}_colorization$tag" $equs
    done
done

## The measured table beside the published one ##
python -m runners.summary --exp exp -o exp/table1_measured.md
if [ "$failed" -gt 0 ]; then
    echo "evaluation.sh: $failed command(s) failed (their errors are above); rerun to resume the rest" >&2
    exit 1
fi
