//! GPT-2 scale through the binary: a model of GPT-2's vocabulary (50257,
//! padded inside) trained on token shards, saved, resumed, evaluated and
//! sampled; Hugging Face-layout directories loaded with `--init-from`;
//! bad shards and unsupported configurations refused before training.

mod common;
use common::{assert_clear_error, assert_success, json_losses, printed_loss, runner, scratch};

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use kernels::Kernels;
use runner::data::Tokenizer;
use runner::model::{Gpt, Preset};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde_json::Value;

/// Shards of a short play in `dir/shards`: 200 validation tokens, training
/// shards of 500.
fn prepared_shards(dir: &Path) -> PathBuf {
    let text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n".repeat(30);
    let input = dir.join("play.txt");
    fs::write(&input, text).unwrap();
    let shards = dir.join("shards");
    assert_success(&runner(&[
        "prepare",
        "--tokenizer",
        "gpt2",
        "--input",
        input.to_str().unwrap(),
        "--output",
        shards.to_str().unwrap(),
        "--val-tokens",
        "200",
        "--shard-tokens",
        "500",
        "-q",
    ]));
    assert!(shards.join("play_train_000002.bin").exists());
    shards
}

/// One shard (llm.c's format) of the tokens of every shard in `shards`, in
/// order, less the end-of-text token `prepare` starts them with.
fn text_as_one_shard(shards: &Path) -> Vec<u8> {
    let mut tokens = Vec::new();
    for index in 0.. {
        let split = if index == 0 { "val" } else { "train" };
        let path = shards.join(format!("play_{split}_{index:06}.bin"));
        if !path.exists() {
            break;
        }
        tokens.extend_from_slice(&fs::read(path).unwrap()[1024..]);
    }
    assert_eq!(&tokens[..2], 50256u16.to_le_bytes());
    let tokens = &tokens[2..];
    let mut header = [0i32; 256];
    header[..3].copy_from_slice(&[20240520, 1, (tokens.len() / 2) as i32]);
    let mut bytes: Vec<u8> = header.iter().flat_map(|h| h.to_le_bytes()).collect();
    bytes.extend_from_slice(tokens);
    bytes
}

fn train(args: &[&str]) -> std::process::Output {
    let base = [
        "train",
        "--preset",
        "tiny",
        "--batch",
        "4",
        "--threads",
        "1",
    ];
    runner(&[&base[..], args].concat())
}

#[test]
fn a_gpt2_vocabulary_model_trains_on_shards_resumes_evaluates_and_samples() {
    let dir = scratch("gpt2-shards");
    let shards = prepared_shards(&dir);
    let shards_s = shards.to_str().unwrap();
    let (ckpt, straight_json, resumed_json) = (
        dir.join("ckpt"),
        dir.join("straight.json"),
        dir.join("resumed.json"),
    );
    let ckpt_s = ckpt.to_str().unwrap();

    // Shards default to the gpt2 tokenizer.
    let out = train(&[
        "--data",
        shards_s,
        "--steps",
        "6",
        "--json",
        straight_json.to_str().unwrap(),
    ]);
    assert_success(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("V50257 | Tokenizer: gpt2"), "{log}");
    assert!(log.contains("validation tokens from"), "{log}");

    // Stopped at 3, saved, resumed: the same losses as the straight run.
    assert_success(&train(&[
        "--data",
        shards_s,
        "--steps",
        "6",
        "--stop-at",
        "3",
        "--save",
        ckpt_s,
        "-q",
    ]));
    assert_success(&train(&[
        "--data",
        shards_s,
        "--steps",
        "6",
        "--resume",
        ckpt_s,
        "--json",
        resumed_json.to_str().unwrap(),
        "-q",
    ]));
    let straight = json_losses(&straight_json);
    assert_eq!(straight.len(), 6);
    assert_eq!(json_losses(&resumed_json), straight[3..]);

    // Training shards of the same lengths, two tokens swapped in one of
    // them: other data, refused before any step.
    let other = dir.join("other-shards");
    fs::create_dir(&other).unwrap();
    for entry in fs::read_dir(&shards).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, other.join(path.file_name().unwrap())).unwrap();
    }
    let swapped = other.join("play_train_000002.bin");
    let mut bytes = fs::read(&swapped).unwrap();
    let (a, b) = (1024, 1024 + 2 * 7);
    assert_ne!(bytes[a..a + 2], bytes[b..b + 2]);
    for i in 0..2 {
        bytes.swap(a + i, b + i);
    }
    fs::write(&swapped, bytes).unwrap();
    let out = train(&[
        "--data",
        other.to_str().unwrap(),
        "--steps",
        "6",
        "--resume",
        ckpt_s,
        "-q",
    ]);
    assert_clear_error(&out, "--data: checkpoint 1091 training tokens");
    assert!(String::from_utf8_lossy(&out.stderr).contains(", shards "));

    // The checkpoint holds the real vocabulary and names its tokenizer.
    let config: Value =
        serde_json::from_slice(&fs::read(ckpt.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["vocab_size"], 50257);
    assert_eq!(config["tokenizer"], "gpt2");
    assert_eq!(config["eos_token_id"], 50256);
    let bytes = fs::read(ckpt.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        st.tensor("transformer.wte.weight").unwrap().shape(),
        [50257, 32]
    );

    // Evaluated on the validation shard, on a shard file, and on text.
    let val = shards.join("play_val_000000.bin");
    let train_shard_1 = shards.join("play_train_000001.bin");
    let on_dir = printed_loss(&runner(&[
        "eval",
        "--checkpoint",
        ckpt_s,
        "--data",
        shards_s,
    ]));
    let on_file = printed_loss(&runner(&[
        "eval",
        "--checkpoint",
        ckpt_s,
        "--data",
        val.to_str().unwrap(),
    ]));
    assert_eq!(on_dir, on_file);
    assert!(on_dir < (50257f64).ln(), "{on_dir}");
    // Evaluation reads a folder's validation shards only: it needs no
    // training shards, and a folder of those alone says what it lacks.
    let val_only = dir.join("val-only");
    fs::create_dir(&val_only).unwrap();
    fs::copy(&val, val_only.join("play_val_000000.bin")).unwrap();
    let eval_on = |folder: &Path| {
        runner(&[
            "eval",
            "--checkpoint",
            ckpt_s,
            "--data",
            folder.to_str().unwrap(),
        ])
    };
    assert_eq!(printed_loss(&eval_on(&val_only)), on_dir);
    let train_only = dir.join("train-only");
    fs::create_dir(&train_only).unwrap();
    fs::copy(&train_shard_1, train_only.join("play_train_000001.bin")).unwrap();
    assert_clear_error(
        &eval_on(&train_only),
        "evaluation reads a data folder's `*_val[_N].bin` token shards",
    );
    let text = dir.join("play.txt");
    let on_text = printed_loss(&runner(&[
        "eval",
        "--checkpoint",
        ckpt_s,
        "--data",
        text.to_str().unwrap(),
    ]));
    assert!(on_text < (50257f64).ln(), "{on_text}");
    // The text's tokens are the shards' in order after their leading
    // end-of-text token: evaluated as one shard, the same loss exactly.
    let whole = dir.join("whole.bin");
    fs::write(&whole, text_as_one_shard(&shards)).unwrap();
    let on_whole = printed_loss(&runner(&[
        "eval",
        "--checkpoint",
        ckpt_s,
        "--data",
        whole.to_str().unwrap(),
    ]));
    assert_eq!(on_text, on_whole);

    // Sampling at a high temperature: every token is in the vocabulary
    // (the padded logits are never drawn), and the bytes are the tokens'.
    let json = dir.join("generate.json");
    let out = runner(&[
        "generate",
        "--checkpoint",
        ckpt_s,
        "--prompt",
        "First Citizen: ✓",
        "--max-new-tokens",
        "40",
        "--temperature",
        "3",
        "--json",
        json.to_str().unwrap(),
        "-q",
    ]);
    assert_success(&out);
    assert!(out.stdout.starts_with("First Citizen: ✓".as_bytes()));
    let record: Value = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
    assert_eq!(record["tokens"], 40);

    // A prompt longer than the block size (32 tokens), in tokens not bytes.
    let long = " speak".repeat(40);
    let out = runner(&["generate", "--checkpoint", ckpt_s, "--prompt", &long]);
    assert_clear_error(
        &out,
        "the prompt is 40 tokens, longer than the model's block size of 32",
    );
}

#[test]
fn generation_stops_at_the_end_of_text_token() {
    let dir = scratch("gpt2-eot");
    let ckpt = dir.join("ckpt");
    let cfg = Preset::Tiny.config(Tokenizer::Gpt2);
    let model = Gpt::new(cfg, Kernels::best(), 1).unwrap();
    runner::checkpoint::save(&ckpt, &model, None).unwrap();
    // The final LayerNorm's output is its bias alone (weight 0), and only
    // the end-of-text row of the tied embedding points along it: every
    // greedy draw is end-of-text.
    let path = ckpt.join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let mut values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        match name.as_str() {
            "transformer.ln_f.weight" => values.fill(0.0),
            "transformer.ln_f.bias" => values.fill(1.0),
            "transformer.wte.weight" => {
                let c = view.shape()[1];
                values.fill(0.0);
                values[50256 * c..][..c].fill(1.0);
            }
            _ => {}
        }
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((name, view.shape().to_vec(), data));
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();

    let json = dir.join("generate.json");
    let out = runner(&[
        "generate",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "20",
        "--temperature",
        "0",
        "--json",
        json.to_str().unwrap(),
        "-q",
    ]);
    assert_success(&out);
    // Drawn, not printed, and the last.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Hello\n");
    let record: Value = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
    assert_eq!(record["tokens"], 1);
}

#[test]
fn bad_shards_are_refused_before_training() {
    let dir = scratch("gpt2-bad-shards");
    let shards = prepared_shards(&dir);
    let shards_s = shards.to_str().unwrap();
    let train_shard = shards.join("play_train_000001.bin");
    let good = fs::read(&train_shard).unwrap();
    type Spoil = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: [(&str, Spoil); 3] = [
        ("magic", Box::new(|b| b[0] ^= 1)),
        ("version", Box::new(|b| b[4] = 7)),
        ("but the file holds", Box::new(|b| b.truncate(b.len() - 2))),
    ];
    for (needle, spoil) in cases {
        let mut bytes = good.clone();
        spoil(&mut bytes);
        fs::write(&train_shard, &bytes).unwrap();
        let out = train(&["--data", shards_s, "--steps", "2"]);
        assert_clear_error(&out, needle);
        assert!(String::from_utf8_lossy(&out.stderr).contains("play_train_000001.bin"));
    }
    fs::write(&train_shard, &good).unwrap();

    // GPT-2 shards do not train a byte model: their headers say whose
    // they are, and where they do not (llm.c's), their ids do not fit.
    let out = train(&["--data", shards_s, "--tokenizer", "byte", "--steps", "2"]);
    assert_clear_error(
        &out,
        "its tokens are of the gpt2 tokenizer, but the model reads the byte",
    );
    let mut unmarked = good.clone();
    unmarked[12..16].fill(0);
    fs::write(&train_shard, &unmarked).unwrap();
    let unmarked_s = train_shard.to_str().unwrap();
    let out = train(&["--data", unmarked_s, "--tokenizer", "byte", "--steps", "2"]);
    assert_clear_error(&out, "is not below the model's vocabulary of 256");
    fs::write(&train_shard, &good).unwrap();

    // A folder without validation shards, and one shard alone.
    fs::remove_file(shards.join("play_val_000000.bin")).unwrap();
    let out = train(&["--data", shards_s, "--steps", "2"]);
    assert_clear_error(&out, "needs `*_train[_N].bin` and `*_val[_N].bin`");
    let out = train(&[
        "--data",
        train_shard.to_str().unwrap(),
        "--steps",
        "2",
        "-q",
    ]);
    assert_success(&out);
}

/// Rewrites our checkpoint in `from` as `save_pretrained` of a bare
/// `GPT2Model` would (the `gpt2` repository's layout) into `to`: names
/// without `transformer.`, weights in `dtype`, `config.json` without our
/// tokenizer key, and with `lm_head` an explicit `lm_head.weight`.
fn hugging_face_copy(from: &Path, to: &Path, bf16: bool, lm_head: Option<f32>) {
    fs::create_dir_all(to).unwrap();
    let bytes = fs::read(from.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let data: Vec<u8> = if bf16 {
            // Truncation to bf16 (exactly representable when loaded back).
            view.data()
                .chunks_exact(4)
                .flat_map(|b| [b[2], b[3]])
                .collect()
        } else {
            view.data().to_vec()
        };
        let dtype = if bf16 { Dtype::BF16 } else { Dtype::F32 };
        let bare = name.trim_start_matches("transformer.").to_string();
        if let (Some(scale), "wte.weight") = (lm_head, bare.as_str()) {
            let head: Vec<u8> = data
                .chunks_exact(4)
                .flat_map(|b| (f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * scale).to_le_bytes())
                .collect();
            tensors.push(("lm_head.weight".into(), dtype, view.shape().to_vec(), head));
        }
        tensors.push((bare, dtype, view.shape().to_vec(), data));
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    fs::write(
        to.join("model.safetensors"),
        safetensors::serialize(views, Some(meta)).unwrap(),
    )
    .unwrap();
    let mut config: Value =
        serde_json::from_slice(&fs::read(from.join("config.json")).unwrap()).unwrap();
    let object = config.as_object_mut().unwrap();
    object.remove("tokenizer");
    object.insert("reorder_and_upcast_attn".into(), false.into());
    object.insert("summary_type".into(), "cls_index".into());
    fs::write(to.join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
}

fn edit(dir: &Path, key: &str, value: Value) {
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    config[key] = value;
    fs::write(path, serde_json::to_vec(&config).unwrap()).unwrap();
}

#[test]
fn hugging_face_directories_load_and_fine_tune() {
    let dir = scratch("gpt2-hf");
    let shards = prepared_shards(&dir);
    let shards_s = shards.to_str().unwrap();
    let ours = dir.join("ours");
    assert_success(&train(&[
        "--data",
        shards_s,
        "--steps",
        "3",
        "--save",
        ours.to_str().unwrap(),
        "-q",
    ]));
    let eval = |ckpt: &Path| {
        runner(&[
            "eval",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--data",
            shards_s,
            "--threads",
            "1",
        ])
    };
    let reference = printed_loss(&eval(&ours));

    // f32 with bare names and a tied lm_head.weight: the same model.
    let hf = dir.join("hf");
    hugging_face_copy(&ours, &hf, false, Some(1.0));
    assert_eq!(printed_loss(&eval(&hf)), reference);
    // bf16 weights: the same model, rounded.
    let hf_bf16 = dir.join("hf-bf16");
    hugging_face_copy(&ours, &hf_bf16, true, None);
    let rounded = printed_loss(&eval(&hf_bf16));
    assert!(
        (rounded - reference).abs() < 0.05 * reference,
        "{rounded} vs {reference}"
    );

    // Fine-tuning from it: a fresh optimizer, then a checkpoint that
    // resumes; the log says where the weights came from.
    let tuned = dir.join("tuned");
    let out = train(&[
        "--data",
        shards_s,
        "--init-from",
        hf.to_str().unwrap(),
        "--steps",
        "4",
        "--stop-at",
        "2",
        "--save",
        tuned.to_str().unwrap(),
    ]);
    assert_success(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(&format!("Initialized from {}", hf.display())),
        "{log}"
    );
    assert_success(&train(&[
        "--data",
        shards_s,
        "--steps",
        "4",
        "--resume",
        tuned.to_str().unwrap(),
        "-q",
    ]));
    // The shape is the checkpoint's: asking for another is refused.
    let out = train(&[
        "--data",
        shards_s,
        "--init-from",
        hf.to_str().unwrap(),
        "--channels",
        "64",
    ]);
    assert_clear_error(&out, "but this run asks for");

    // An untied head is another model.
    let untied = dir.join("untied");
    hugging_face_copy(&ours, &untied, false, Some(0.5));
    assert_clear_error(&eval(&untied), "lm_head.weight differs from wte.weight");
    // Declared untied, with no head in the file: the head is missing. With
    // one equal to the embedding, it is the same model.
    let no_head = dir.join("no-head");
    hugging_face_copy(&ours, &no_head, false, None);
    edit(&no_head, "tie_word_embeddings", Value::from(false));
    assert_clear_error(&eval(&no_head), "has no lm_head.weight");
    edit(&hf, "tie_word_embeddings", Value::from(false));
    assert_eq!(printed_loss(&eval(&hf)), reference);

    // Settings this runner does not compute are refused by name.
    for (key, value) in [
        ("model_type", Value::from("llama")),
        ("activation_function", Value::from("relu")),
        ("scale_attn_by_inverse_layer_idx", Value::from(true)),
        ("add_cross_attention", Value::from(true)),
        ("n_inner", Value::from(100)),
        ("tie_word_embeddings", Value::from("yes")),
    ] {
        let bad = dir.join(format!("bad-{key}"));
        hugging_face_copy(&ours, &bad, false, None);
        edit(&bad, key, value);
        assert_clear_error(&eval(&bad), &format!("`{key}` is"));
        let out = train(&["--data", shards_s, "--init-from", bad.to_str().unwrap()]);
        assert_clear_error(&out, &format!("`{key}` is"));
    }
}
