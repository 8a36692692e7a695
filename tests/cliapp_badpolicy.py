from offload import App

app = App("bad", broker="sqlite:///bad.db")
app.queue("emails", rate="20/x")
