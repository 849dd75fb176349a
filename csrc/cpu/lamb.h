// LAMB (docs/internals.md, Note [LAMB]; timm's and mmpretrain's `Lamb`, apex's adam_w_mode) for
// the CPU driver (Note [one driver], ops.cpp), a two-stage algorithm (Note [two stages],
// csrc/algorithms.h). Included inside namespace fusedopt::cpu::FUSEDOPT_ISA.
//
// Note [kept update]: stage 1 needs each element's new moments and update u to sum |p|^2 and
// |u|^2; stage 2 steps p with u times the trust ratio. Stage 1 (keep) writes m and v and keeps u
// in a buffer of the compute type; stage 2 (apply) reads p and u and writes p alone. So u is
// computed once (3 divisions and a root per lane), and never from stored, rounded moments: p
// steps with the u whose norm the ratio divides by. Where the buffer lives (ops.cpp): a tensor
// of up to 4 chunks takes both stages on one thread (Note [two stages in cache],
// multi_tensor.h), its u in that thread's buffer; larger ones are stepped in groups of up to
// 2^24 elements, one parallel region per group (Note [pipelined stages], multi_tensor.h), their
// u in a buffer of the group's size. Which path a tensor takes changes no bit: the sums add in one
// order (two_stage.h; tests/test_cpu_precision.py). Before this, stage 1 wrote nothing and stage
// 2 computed m, v and u again, as LARS's recompute path still does for the algorithms without
// keep (two_stage.h's terms, stage1_loop).
// Measured, 2 threads, fp32, LAMB with its default global clip against AdamW, in one process
// (the machine's memory speed moves between processes by up to 50%, so builds were compared in
// one process or in alternated runs):
// - 20M params in 200 tensors of 2 chunks, all stepped in cache (`python bench/two_stage.py
//   --repeats 2 --rounds 15`, three runs per build alternated): LAMB 14.7-15.1 -> 11.0-11.3 ms
//   beside AdamW's 6.9-7.3, LAMB/AdamW 2.04-2.14 -> 1.57-1.59; bf16, fp16 and bf16 with masters
//   gained alike (13.3 -> 10.9, 12.9 -> 9.5, 14.8 -> 12.1 ms), though keep and apply walk bf16 in
//   element order, not in pairs.
// - Real models, where most params are in larger tensors (the bench's presets, `python
//   bench/two_stage.py --preset resnet50`; 17de82a's build in alternated runs): ResNet-50
//   LAMB/AdamW 1.97-2.19 -> 1.67-1.75, ViT-B/16 2.11-2.27 -> 1.72-1.84. How the larger tensors'
//   two stages are scheduled mattered as much (Note [pipelined stages]). At 20M params in
//   200 tensors, in runs where this VM's memory was slower (AdamW 11 ms, not 7): 1.56-1.57 ->
//   1.41-1.42 (bench/results/cpu-amd-epyc-2c/two-stage-*.json: the final build's runs).
// What is left (perf): keep is bound by its loads from DRAM (16 B in, 8 B out per element, as
// AdamW's), apply takes ~9% of the step, and the global clip's norm pass reads g once more: 1.9
// ms at 20M params (80 MB at ~41 GB/s, the read-only rate here). Without that clip
// (max_grad_norm=None) 20M params in 200 tensors take 1.29x AdamW.
// Stage 1's compute is not what is left (issue 26, bench/cpu_micro.cpp's LAMB rows: 2^18
// elements, one thread, AVX-512): in cache it takes 0.55 ns/element against AdamW's 0.40 (three
// divisions and a root per lane against two and a root, and every square widened to double). A
// probe that multiplied by the bias corrections' reciprocals and summed the squares in float
// blocks (Note [norm accumulation]) took it to 0.38-0.39 (AVX2 0.72 -> 0.44), but moved no step
// beyond this VM's noise: `bench/two_stage.py`, builds alternated, LAMB/AdamW 1.36-1.42 against
// 1.38-1.54 on 20M params in 200 tensors and 1.67-1.75 against 1.65-1.76 on ResNet-50's shapes
// (AVX2 alike), the memory in its slower state; 1.47-1.49 against 1.55-1.62 in unpaired runs
// where it was fast. At 2 threads the step waits on memory. For that the probe departed from
// timm's rounding and from the exact double sums, and it was not kept.

struct Lamb {
  static constexpr int kId = kLamb;
  static constexpr bool kTwoStage = true;
  static constexpr bool kKeepsUpdate = true;   // Note [kept update]
  static constexpr int kMinStates = 2, kMaxStates = 2;   // exp_avg, exp_avg_sq

  struct Scalars {
    double grad_scale, grad_coef, l2, decay_wd, beta1, beta3, beta2, one_minus_beta2,
        bias_correction1, bias_correction2_sqrt, eps, neg_lr;
    double trust_ratio;   // finish(); 1 unless adapted
    bool adapt, trust_clip;
  };

  static bool prepare(TensorStep& t, const double* row, float step, int64_t flags,
                      StepContext& c) {
    const double t_now = static_cast<double>(step + 1.0f);   // torch's float32 step += 1
    const double wd = row[kWeightDecay], beta1 = row[lamb::kBeta1], beta2 = row[lamb::kBeta2];
    const bool decoupled = flags & lamb::kDecoupled;
    const bool bias_correction = flags & lamb::kBiasCorrection;
    Scalars s{};
    s.grad_scale = c.grad_scale;
    s.grad_coef = c.clip_coef * ((flags & lamb::kMaximize) ? -1 : 1);
    s.l2 = decoupled ? 0.0 : wd;
    s.decay_wd = decoupled ? wd : 0.0;
    s.beta1 = beta1;
    s.beta3 = (flags & lamb::kGradAveraging) ? 1.0 - beta1 : 1.0;
    s.beta2 = beta2;
    s.one_minus_beta2 = 1.0 - beta2;
    s.bias_correction1 = bias_correction ? c.bias_correction1(beta1, t_now) : 1.0;
    s.bias_correction2_sqrt = bias_correction ? c.bias_correction2_sqrt(beta2, t_now) : 1.0;
    s.eps = row[lamb::kEps];
    s.neg_lr = -row[kLr];
    s.trust_ratio = 1.0;
    s.adapt = wd != 0 || (flags & lamb::kAlwaysAdapt);
    s.trust_clip = (flags & lamb::kTrustClip) != 0;
    t.set_scalars(s);
    return s.adapt;                      // r = 1 needs no norms
  }

  // sums: |p|^2, |u|^2. The ratio in double, 1 unless both norms are > 0, at most 1 with
  // trust_clip, as the reference (fusedopt/algorithms/lamb.py) forms it; timm divides the
  // norms as tensors of the compute type, a difference well inside fp32's tolerance.
  static void finish(TensorStep& t, const double* sums) {
    Scalars& s = t.scalars_as<Scalars>();
    if (!s.adapt) return;
    const double wn = std::sqrt(sums[0]), un = std::sqrt(sums[1]);
    const double r = wn > 0 && un > 0 ? wn / un : 1.0;
    s.trust_ratio = s.trust_clip ? std::min(r, 1.0) : r;
  }

  template <class C>
  struct Math {
    C grad_scale, grad_coef, l2, decay_wd, beta1, beta3, beta2, one_minus_beta2, bc1, bc2_sqrt,
        eps, neg_lr, trust_ratio;
    bool use_l2, use_decay;

    explicit Math(const Scalars& s)
        : grad_scale(static_cast<C>(s.grad_scale)),
          grad_coef(static_cast<C>(s.grad_coef)),
          l2(static_cast<C>(s.l2)),
          decay_wd(static_cast<C>(s.decay_wd)),
          beta1(static_cast<C>(s.beta1)),
          beta3(static_cast<C>(s.beta3)),
          beta2(static_cast<C>(s.beta2)),
          one_minus_beta2(static_cast<C>(s.one_minus_beta2)),
          bc1(static_cast<C>(s.bias_correction1)),
          bc2_sqrt(static_cast<C>(s.bias_correction2_sqrt)),
          eps(static_cast<C>(s.eps)),
          neg_lr(static_cast<C>(s.neg_lr)),
          trust_ratio(static_cast<C>(s.trust_ratio)),
          use_l2(s.l2 != 0),
          use_decay(s.decay_wd != 0) {}

    // The new moments (into m, v) and the update of one vector of elements.
    template <class V>
    V update(V g, V p, V& m, V& v) const {
      g = g * V::set1(grad_scale) * V::set1(grad_coef);    // unscale, then clip (and maximize)
      if (use_l2) g = fma(p, V::set1(l2), g);               // grad.add(p, alpha=wd)
      m = fma(g, V::set1(beta3), m * V::set1(beta1));       // mul_(beta1).add_(g, alpha=beta3)
      v = fma(V::set1(one_minus_beta2) * g, g, v * V::set1(beta2));   // mul_, addcmul_
      V denom = sqrt(v) / V::set1(bc2_sqrt) + V::set1(eps);
      V u = (m / V::set1(bc1)) / denom;                     // (m / bc1).div_(denom)
      if (use_decay) u = fma(p, V::set1(decay_wd), u);      // update.add_(p, alpha=wd)
      return u;
    }

    // Note [kept update]: stage 1, the new moments into x[1], x[2], the terms |p|^2 and |u|^2
    // are summed from (two_stage.h), and the update, returned
    template <class V, int K>
    V keep(V g, V (&x)[K], V (&out)[kSums]) const {
      out[0] = x[0];
      out[1] = update(g, x[0], x[1], x[2]);
      return out[1];
    }

    // stage 2 with the kept update u: operator()'s ops on x[0]
    template <class V>
    V apply(V u, V p) const {
      return fma(u * V::set1(trust_ratio), V::set1(neg_lr), p);
    }

    // x: param, exp_avg, exp_avg_sq
    template <class V, int K>
    void operator()(V g, V (&x)[K]) const {
      V u = update(g, x[0], x[1], x[2]) * V::set1(trust_ratio);   // update.mul_(trust_ratio)
      x[0] = fma(u, V::set1(neg_lr), x[0]);                        // p.add_(update, alpha=-lr)
    }
  };
};
