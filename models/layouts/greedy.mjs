// transformers.js generating greedily from a local model directory: node greedy.mjs DIR DTYPE IDS_JSON COUNT
// (run from the directory where @huggingface/transformers is installed).
import { AutoModelForCausalLM, env, Tensor } from "@huggingface/transformers";
import path from "node:path";
const [dir, dtype, idsJson, count] = process.argv.slice(2);
env.allowRemoteModels = false;
env.localModelPath = path.dirname(path.resolve(dir)) + "/";
const model = await AutoModelForCausalLM.from_pretrained(path.basename(dir), { dtype, device: "cpu" });
const ids = JSON.parse(idsJson);
const input_ids = new Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [1, ids.length]);
const attention_mask = new Tensor("int64", BigInt64Array.from(ids.map(() => 1n)), [1, ids.length]);
const out = await model.generate({ input_ids, attention_mask, max_new_tokens: Number(count), do_sample: false, eos_token_id: [] });
console.log(JSON.stringify(Array.from(out.data.slice(ids.length)).map(Number)));
