// LAMB (docs/internals.md, Note [LAMB]; timm's and mmpretrain's `Lamb`, apex's adam_w_mode) for
// the CPU driver (Note [one driver], ops.cpp), a two-stage algorithm (Note [two stages],
// csrc/algorithms.h). Included inside namespace fusedopt::cpu::FUSEDOPT_ISA.
//
// Note [LAMB recomputes]: stage 1 computes the new moments and the update u of each element to
// sum |p|^2 and |u|^2, and writes nothing; stage 2 computes them again from the same inputs
// (same ops, same bits), then writes p, m and v. Writing m and v in stage 1 instead would not
// help: an fp16/bf16 bucket stores its moments rounded, and stage 2 would then step with an
// update other than the one whose norm it divides by; and a tensor of up to 4 chunks takes both
// stages on one thread (Note [two stages in cache], multi_tensor.h), so stage 2 reads from
// cache, not DRAM. What recomputing costs is the divider: u takes 3 divisions and a root per
// lane, twice, most of what is left of fp32 LAMB's step (numbers in that Note). What would take it
// further: stage 1 of a cached tensor keeping u in a per-thread buffer (2^18 floats, 1 MiB) that
// stage 2 reads instead, recomputing only m and v (multiplies and adds); that needs the element
// index (or a u stream) in the functor call of elementwise.h and the buffer in TensorStep.

struct Lamb {
  static constexpr int kId = kLamb;
  static constexpr bool kTwoStage = true;
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

    static constexpr int kTermReads = 3;   // param, exp_avg, exp_avg_sq

    // stage 1: |p|^2 and |u|^2 (two_stage.h); the moments are computed, not written
    template <class V, int R>
    void terms(V g, const V (&x)[R], V (&out)[kSums]) const {
      V m = x[1], v = x[2];
      out[0] = x[0];
      out[1] = update(g, x[0], m, v);
    }

    // x: param, exp_avg, exp_avg_sq
    template <class V, int K>
    void operator()(V g, V (&x)[K]) const {
      V u = update(g, x[0], x[1], x[2]) * V::set1(trust_ratio);   // update.mul_(trust_ratio)
      x[0] = fma(u, V::set1(neg_lr), x[0]);                        // p.add_(update, alpha=-lr)
    }
  };
};
