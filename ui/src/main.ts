// Entry point: mounts the app on #app.
import { mount } from "svelte";
import "@xterm/xterm/css/xterm.css";
import "./app.css";
import App from "./App.svelte";

const target = document.getElementById("app");
if (!target) throw new Error("index.html has no #app");
export default mount(App, { target });
